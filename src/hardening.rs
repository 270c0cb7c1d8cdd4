//! Process hardening for commands that hold the master key (`fugo serve`,
//! `fugo keys split`): no core dumps, not dumpable (which also refuses
//! ptrace attachment and /proc/PID/mem reads by processes of the same
//! user), and, where the operating system lets a process lock memory
//! without risk, every page locked against swapping.
//!
//! All through rustix's safe functions: the crate forbids unsafe code.
//!
//! Locking is careful: `mlockall(MCL_CURRENT | MCL_FUTURE)` under a finite
//! RLIMIT_MEMLOCK makes every later allocation past the limit fail, which
//! would crash a busy server hours after it started. So memory is locked
//! only when the limit is unlimited or the process holds CAP_IPC_LOCK;
//! otherwise, or when locking fails, a warning says how to enable it
//! (D113).

use std::io;

use rustix::mm::{MlockAllFlags, mlockall};
use rustix::process::{
    DumpableBehavior, Resource, Rlimit, getrlimit, set_dumpable_behavior, setrlimit,
};
use thiserror::Error;

/// A protection that must hold could not be set.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HardeningError {
    /// setrlimit(RLIMIT_CORE, 0, 0) failed.
    #[error("cannot disable core dumps (setrlimit RLIMIT_CORE 0/0): {0}")]
    CoreDumps(#[source] io::Error),
    /// prctl(PR_SET_DUMPABLE, 0) failed.
    #[error("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE 0): {0}")]
    Dumpable(#[source] io::Error),
}

/// What happened to memory locking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryLock {
    /// Every current and future page is locked.
    Locked,
    /// Not locked; the text says why and what to do.
    NotLocked(String),
}

/// Disables core dumps (soft and hard limit 0, so the process cannot raise
/// it again) and makes the process non-dumpable. Both only ever lower
/// privileges, so they fail only on a broken system; the caller refuses to
/// go on then.
pub fn disable_dumps() -> Result<(), HardeningError> {
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|errno| HardeningError::CoreDumps(errno.into()))?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .map_err(|errno| HardeningError::Dumpable(errno.into()))
}

/// Locks all memory against swapping when that cannot later starve the
/// process (see the module documentation); never fails the caller.
pub fn lock_memory() -> MemoryLock {
    let limit = getrlimit(Resource::Memlock);
    let privileged = rustix::thread::capabilities(None)
        .map(|sets| {
            sets.effective
                .contains(rustix::thread::CapabilitySet::IPC_LOCK)
        })
        .unwrap_or(false);
    if limit.current.is_some() && !privileged {
        return MemoryLock::NotLocked(format!(
            "memory is not locked against swapping: RLIMIT_MEMLOCK is {} bytes and the process \
             lacks CAP_IPC_LOCK (locking all memory under a limit would make later allocations \
             fail); to lock it, raise the limit to unlimited (systemd: LimitMEMLOCK=infinity) \
             or grant CAP_IPC_LOCK, or use encrypted swap or none",
            limit.current.unwrap_or(0)
        ));
    }
    // ONFAULT locks pages as they are touched instead of filling every
    // mapping at once (each thread's whole stack); kernels before 4.4 lack
    // it and say EINVAL.
    let all = MlockAllFlags::CURRENT | MlockAllFlags::FUTURE;
    let locked = match mlockall(all | MlockAllFlags::ONFAULT) {
        Err(rustix::io::Errno::INVAL) => mlockall(all),
        other => other,
    };
    match locked {
        Ok(()) => MemoryLock::Locked,
        Err(errno) => MemoryLock::NotLocked(format!(
            "memory is not locked against swapping: mlockall failed: {}; use encrypted swap \
             or none",
            io::Error::from(errno)
        )),
    }
}
