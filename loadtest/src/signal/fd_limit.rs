//! The open-file budget: every WebSocket is a descriptor, and on these machines a process may
//! hold at most 20,000 (RLIMIT_NOFILE, not raisable). A plan that cannot fit is refused up front
//! rather than failing with EMFILE halfway through the connects.

/// Descriptors kept aside for the runtime (epoll, eventfds, timers), stdio and /proc reads.
pub const SPARE_DESCRIPTORS: u64 = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the plan needs {connections} connections + {SPARE_DESCRIPTORS} spare = {needed} open files, \
     but RLIMIT_NOFILE allows {soft} (hard limit {hard}); use at most --pairs {max_pairs}, or \
     split the load over several processes"
)]
pub struct FdLimitError {
    pub connections: u64,
    pub needed: u64,
    pub soft: u64,
    pub hard: u64,
    pub max_pairs: u64,
}

/// Whether `connections` sockets fit under a soft limit; pure, for tests.
pub fn check(connections: u64, soft: u64, hard: u64) -> Result<(), FdLimitError> {
    let needed = connections + SPARE_DESCRIPTORS;
    if needed <= soft {
        return Ok(());
    }
    Err(FdLimitError {
        connections,
        needed,
        soft,
        hard,
        max_pairs: soft.saturating_sub(SPARE_DESCRIPTORS) / 2,
    })
}

/// Raises the soft limit to the hard one (always allowed) and checks the plan against it.
pub fn ensure(connections: u64) -> Result<(), FdLimitError> {
    let (soft, hard) = raise_soft_limit();
    check(connections, soft, hard)
}

/// The (soft, hard) open-file limits after raising soft to hard; `u64::MAX` is unlimited.
pub fn raise_soft_limit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other preconditions.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        // Unknown: assume the common default rather than refusing everything.
        return (1024, 1024);
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising soft up to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    (lim.rlim_cur, lim.rlim_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nineteen_thousand_connections_fit_under_twenty_thousand() {
        assert!(check(19_000, 20_000, 20_000).is_ok());
    }

    #[test]
    fn a_plan_over_the_limit_is_refused_with_the_largest_that_fits() {
        let e = check(20_000, 20_000, 20_000).expect_err("20,000 + spare cannot fit");
        assert_eq!(e.needed, 20_064);
        assert_eq!(e.max_pairs, 9_968);
        assert!(e.to_string().contains("--pairs 9968"), "{e}");
    }

    #[test]
    fn this_process_has_a_limit() {
        let (soft, hard) = raise_soft_limit();
        assert!(soft > 0 && soft <= hard);
    }
}
