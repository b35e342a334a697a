//! External tools a test needs (coturn's programs, redis-server, peerjs).
//!
//! CI installs them, so a missing one fails the test (it is not skipped) with the command that
//! installs it.

use std::path::PathBuf;

/// Where `program` is on PATH, if it is.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Fails the test with `install` (how to install it) when `program` is not on PATH.
pub fn require(program: &str, install: &str) {
    assert!(
        which(program).is_some(),
        "`{program}` is not installed: {install}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_a_made_up_program() {
        assert!(which("sh").is_some());
        assert!(which("iceway-testkit-no-such-program").is_none());
    }

    #[test]
    #[should_panic(expected = "is not installed: apt-get install nothing")]
    fn missing_program_fails_with_the_hint() {
        require("iceway-testkit-no-such-program", "apt-get install nothing");
    }
}
