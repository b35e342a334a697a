use std::path::{Path, PathBuf};

/// Errors reading secret files. They name the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret file {path} holds no secret")]
    Empty { path: PathBuf },
}

/// Reads a secret mounted as a file (a Kubernetes Secret); surrounding whitespace is dropped
/// because editors and `kubectl create secret --from-file` add trailing newlines.
pub fn read_secret(path: &Path) -> Result<String, SecretError> {
    let lines = read_secret_lines(path)?;
    Ok(lines.join("\n"))
}

/// Reads a file of secrets, one per line (several active at once for rotation). Blank lines and
/// lines starting with `#` are skipped.
pub fn read_secret_lines(path: &Path) -> Result<Vec<String>, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lines_skip_blanks_and_comments() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(f, "# rotated 2026-11\nnew-secret\n\n  old-secret  \n").expect("write");
        let lines = read_secret_lines(f.path()).expect("read");
        assert_eq!(lines, vec!["new-secret", "old-secret"]);
    }

    #[test]
    fn empty_file_is_an_error_naming_the_path() {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        let err = read_secret(f.path()).expect_err("empty must fail");
        assert!(err.to_string().contains(&f.path().display().to_string()));
    }
}
