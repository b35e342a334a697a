//! The open-file limit a service needs for its configured caps.
//!
//! Linux starts most processes with a soft `RLIMIT_NOFILE` of 1024 and a hard limit far higher
//! (1,048,576 under systemd and in containers). A relay configured for 10,000 TCP clients would
//! hit the soft limit at about a thousand, and every accept past it fails with EMFILE: the caps
//! would never be reached, and the failures look like an attack. So each service raises its soft
//! limit towards what its caps need, as far as the hard limit allows, and warns when that is not
//! enough, naming the key to lower or the limit to raise.

/// What `raise_nofile` found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the ceiling for an unprivileged raise).
    pub hard: u64,
    /// What the caller said its configuration needs.
    pub wanted: u64,
}

impl NofileLimit {
    pub fn is_enough(&self) -> bool {
        self.soft >= self.wanted
    }
}

/// Raises the soft `RLIMIT_NOFILE` to `wanted` (never above the hard limit, never lowers it).
pub fn raise_nofile(wanted: u64) -> std::io::Result<NofileLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a struct we own; it has no other preconditions.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
    let target = wanted.min(hard);
    if target > soft {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads a struct we own; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(NofileLimit {
        soft: target.max(soft),
        hard,
        wanted,
    })
}

/// `raise_nofile`, logging the outcome: a warning when the caps cannot all be met.
pub fn ensure_nofile(service: &str, wanted: u64, keys: &str) {
    match raise_nofile(wanted) {
        Ok(l) if l.is_enough() => {
            tracing::debug!(soft = l.soft, hard = l.hard, wanted, "open-file limit")
        }
        Ok(l) => tracing::warn!(
            soft = l.soft,
            hard = l.hard,
            wanted,
            "{service}: the open-file limit (RLIMIT_NOFILE) is below what the configured caps \
             need; connections past it fail with EMFILE before any cap is reached. Raise the \
             limit (ulimit -n, LimitNOFILE= in systemd, the container runtime's nofile ulimit) \
             or lower {keys}"
        ),
        Err(e) => tracing::warn!(error = %e, "{service}: could not read or raise RLIMIT_NOFILE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_within_the_hard_limit_and_never_lowers() {
        let now = raise_nofile(0).expect("getrlimit");
        // Asking for less than we have keeps what we have.
        assert!(now.soft >= 1);
        let again = raise_nofile(1).expect("getrlimit");
        assert_eq!(again.soft, now.soft);
        // Asking for more than the hard limit stops at the hard limit, and says it is not enough.
        let over = raise_nofile(u64::MAX).expect("setrlimit");
        assert_eq!(over.soft, over.hard);
        assert_eq!(over.is_enough(), over.hard == u64::MAX);
    }
}
