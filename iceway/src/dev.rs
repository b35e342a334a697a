//! `iceway dev`: the whole stack in one process.

use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Address every listener binds and the URLs name.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
}

pub async fn run(_args: DevArgs, _state_dir: PathBuf) -> anyhow::Result<()> {
    anyhow::bail!("iceway dev: not wired yet")
}
