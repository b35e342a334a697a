//! Keeps docs/openapi.yaml in step with the code: the routes the router serves and every
//! `reason` the API can answer must be documented. (Schema validity is checked separately with
//! `openapi-spec-validator docs/openapi.yaml`.)

use iceway_auth::api::{ICE_SERVERS_PATH, TURN_CREDENTIALS_PATH};
use iceway_auth::app_token::AppTokenError;

#[test]
fn openapi_document_names_every_route_and_refusal_reason() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let doc = std::fs::read_to_string(path).expect("docs/openapi.yaml is readable");
    assert!(
        doc.starts_with("openapi: 3.1"),
        "not an OpenAPI 3.1 document"
    );
    for route in [ICE_SERVERS_PATH, TURN_CREDENTIALS_PATH] {
        assert!(
            doc.contains(&format!("\n  {route}:\n")),
            "route {route} not documented"
        );
    }
    let token_reasons = [
        AppTokenError::Malformed,
        AppTokenError::MissingKeyId,
        AppTokenError::UnknownKey,
        AppTokenError::AlgorithmNotAllowed,
        AppTokenError::BadSignature,
        AppTokenError::Expired,
        AppTokenError::NotYetValid,
        AppTokenError::WrongAudience,
        AppTokenError::WrongIssuer,
        AppTokenError::MissingClaim("exp".into()),
    ]
    .map(|e| e.reason());
    let api_reasons = [
        "missing_token",
        "missing_service",
        "unsupported_service",
        "bad_query",
        "too_long",
        "invalid_user",
        "username_mismatch",
        "rate_limited",
        "not_found",
        "method_not_allowed",
        "internal",
    ];
    for reason in token_reasons.iter().chain(api_reasons.iter()) {
        assert!(
            doc.contains(&format!("`{reason}`")),
            "reason {reason} not documented"
        );
    }
}
