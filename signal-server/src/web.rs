//! The browser reference client: `/camera` and `/viewer` pages and their assets, served from
//! `web_root` as plain files.

use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use iceway_service::Problem;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

/// Routes for the pages, and a fallback serving the rest of `root` (scripts, styles).
pub fn routes(root: &Path) -> Router {
    let page = |name: &str| {
        let file = root.join(name);
        get(move |req: Request| serve_file(file.clone(), req))
    };
    Router::new()
        .route("/camera", page("camera.html"))
        .route("/viewer", page("viewer.html"))
        .fallback_service(
            ServeDir::new(root).not_found_service(axum::routing::any(|| async { not_found() })),
        )
}

async fn serve_file(file: PathBuf, req: Request) -> Response {
    match ServeFile::new(file).oneshot(req).await {
        Ok(resp) if resp.status() == StatusCode::NOT_FOUND => not_found(),
        Ok(resp) => resp.into_response(),
        Err(never) => match never {},
    }
}

fn not_found() -> Response {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such page").into_response()
}
