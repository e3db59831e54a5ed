//! Starting a step's process without copying the worker: `clone` with
//! `CLONE_VM | CLONE_VFORK`, the way `posix_spawn` starts a process, followed in
//! the child by what must happen between fork and exec for a contained step
//! (its own process group, joining the attempt's cgroup, the step's umask and
//! user, its directory and standard streams, default signal handling).
//!
//! Why not `std::process::Command` with `pre_exec`: any `pre_exec` (and any
//! uid switch) makes std `fork` the worker, which copies the page tables of a
//! multi-threaded process and write-protects its memory; measured on the
//! development machine, that fork, the faults it causes and tearing the copy
//! down at exec took over half of a busy worker's CPU and cut the no-op steps
//! benchmark from ~1,400 to ~330 steps/s. Here the child shares the worker's
//! memory, the worker's thread waits until the child has executed the step (or
//! failed to), and the child makes only raw system calls on memory prepared
//! before it started: no allocation, no lock, no glibc wrapper that would act on
//! the worker's other threads (`setuid` in glibc signals every thread of the
//! calling process, so the ids are changed with the raw system calls).

use std::ffi::{CString, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

/// What a step's process is started with.
#[derive(Debug, Clone)]
pub struct StepProcess {
    /// As written in the step (a bare name is looked up in the step's `PATH`).
    pub program: String,
    pub args: Vec<String>,
    /// The whole environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// `cgroup.procs` files the process writes itself into before it executes.
    pub cgroup_procs: Vec<CString>,
    /// The user and group it runs as, when not the worker's own.
    pub user: Option<(u32, u32)>,
    pub umask: u32,
}

/// A started step: its pid (a child of the worker, to be waited for) and the
/// read ends of its stdout and stderr.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Where a bare program name is found: the first executable file of that name
/// in the step's `PATH`. A name with a `/` is taken relative to `cwd`.
pub fn resolve_program(program: &str, env: &[(String, String)], cwd: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Ok(cwd.join(program));
    }
    let path = env
        .iter()
        .find(|(name, _)| name == "PATH")
        .map_or("", |(_, value)| value.as_str());
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no executable {program:?} in the step's PATH ({path})"),
            )
        })
}

fn c_string(text: &[u8]) -> io::Result<CString> {
    CString::new(text).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} holds a NUL byte",
                String::from_utf8_lossy(text)
                    .chars()
                    .take(64)
                    .collect::<String>()
            ),
        )
    })
}

/// Everything the child reads: raw pointers into memory the parent keeps alive
/// (and does not touch) until the child has executed or exited.
struct ChildPlan {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    procs: *const *const libc::c_char,
    procs_len: usize,
    user: Option<(u32, u32)>,
    umask: libc::mode_t,
    stdin: c_int,
    stdout: c_int,
    stderr: c_int,
    /// The errno of the step that failed, 0 when the child executed the step.
    error: *const AtomicI32,
}

/// Stack of the child until it executes the step.
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// Starts the step; an error says which part failed (the program cannot be
/// found or executed, the cgroup cannot be joined, the user cannot be taken).
pub fn spawn(step: &StepProcess) -> io::Result<Spawned> {
    let program = resolve_program(&step.program, &step.env, &step.cwd)?;
    let program = c_string(program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = std::iter::once(step.program.as_str())
        .chain(step.args.iter().map(String::as_str))
        .map(|arg| c_string(arg.as_bytes()))
        .collect::<io::Result<_>>()?;
    let envp: Vec<CString> = step
        .env
        .iter()
        .map(|(name, value)| c_string(format!("{name}={value}").as_bytes()))
        .collect::<io::Result<_>>()?;
    let cwd = c_string(step.cwd.as_os_str().as_bytes())?;
    let null_terminated = |strings: &[CString]| -> Vec<*const libc::c_char> {
        strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let argv_ptrs = null_terminated(&argv);
    let envp_ptrs = null_terminated(&envp);
    let procs_ptrs: Vec<*const libc::c_char> =
        step.cgroup_procs.iter().map(|s| s.as_ptr()).collect();

    let stdin: OwnedFd = std::fs::File::open("/dev/null")?.into();
    let (stdout_read, stdout_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (stderr_read, stderr_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let error = AtomicI32::new(0);
    let plan = ChildPlan {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        cwd: cwd.as_ptr(),
        procs: procs_ptrs.as_ptr(),
        procs_len: procs_ptrs.len(),
        user: step.user,
        umask: step.umask as libc::mode_t,
        stdin: stdin.as_raw_fd(),
        stdout: stdout_write.as_raw_fd(),
        stderr: stderr_write.as_raw_fd(),
        error: &error,
    };
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    // The stack grows down from its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK_BYTES) & !15;

    // SAFETY: every signal is blocked in this thread while the child shares its
    // memory, so no handler of the worker runs in the child (it restores the
    // handlers to their defaults before it unblocks them); the previous mask is
    // put back right after. `clone` with CLONE_VFORK returns only once the child
    // has executed the step or exited, so everything `plan` points to (owned by
    // this frame) outlives the child's use of it, and the child only makes raw
    // system calls on it (see `child`).
    #[allow(unsafe_code)]
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let pid = libc::clone(
            child,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &plan as *const ChildPlan as *mut c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(stack);
    drop((stdin, stdout_write, stderr_write));
    let failed = error.load(Ordering::Acquire);
    if failed != 0 {
        // The child exited without executing the step: reap it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(io::Error::from_raw_os_error(failed));
    }
    Ok(Spawned {
        pid,
        stdout: stdout_read,
        stderr: stderr_read,
    })
}

/// The child, between `clone` and `execve`: raw system calls only.
#[allow(unsafe_code)]
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildPlan` of `spawn`, alive (and unchanged) until
    // this child executes or exits, as are the strings and arrays it points to.
    unsafe {
        let plan = &*(arg as *const ChildPlan);
        let fail = |plan: &ChildPlan| -> c_int {
            let errno = *libc::__errno_location();
            (*plan.error).store(
                if errno == 0 { libc::EIO } else { errno },
                Ordering::Release,
            );
            libc::_exit(127)
        };
        // Handlers of the worker must not run here: defaults for every signal
        // that has one, and SIGPIPE's default (Rust programs ignore it).
        for signal in 1..=libc::SIGRTMAX() {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && (current.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
                && current.sa_sigaction != libc::SIG_DFL
            {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(plan);
        }
        for index in 0..plan.procs_len {
            let path = *plan.procs.add(index);
            let fd = libc::open(path, libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr() as *const c_void, 1) != 1 {
                return fail(plan);
            }
            libc::close(fd);
        }
        libc::umask(plan.umask);
        if let Some((uid, gid)) = plan.user {
            let groups = [gid as libc::gid_t];
            if libc::syscall(libc::SYS_setgroups, 1usize, groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                return fail(plan);
            }
        }
        if libc::chdir(plan.cwd) != 0 {
            return fail(plan);
        }
        if libc::dup2(plan.stdin, 0) < 0
            || libc::dup2(plan.stdout, 1) < 0
            || libc::dup2(plan.stderr, 2) < 0
        {
            return fail(plan);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(plan.program, plan.argv, plan.envp);
        fail(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn env() -> Vec<(String, String)> {
        vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("FERRY_TEST".into(), "yes".into()),
        ]
    }

    fn run(step: &StepProcess) -> (i32, String, String) {
        let spawned = spawn(step).expect("spawned");
        let mut out = String::new();
        let mut err = String::new();
        std::fs::File::from(spawned.stdout)
            .read_to_string(&mut out)
            .unwrap();
        std::fs::File::from(spawned.stderr)
            .read_to_string(&mut err)
            .unwrap();
        let status =
            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(spawned.pid), None).unwrap();
        let code = match status {
            nix::sys::wait::WaitStatus::Exited(_, code) => code,
            other => panic!("{other:?}"),
        };
        (code, out, err)
    }

    #[test]
    fn a_step_gets_exactly_its_environment_directory_group_and_streams() {
        let dir = tempfile::tempdir().unwrap();
        let step = StepProcess {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "echo env=$(env | sort | tr '\\n' ' '); echo pwd=$(pwd); \
                 echo pgid=$(ps -o pgid= -p $$ | tr -d ' ') pid=$$; umask; echo oops >&2; \
                 read x; echo stdin=${x:-empty}; exit 3"
                    .into(),
            ],
            env: env(),
            cwd: dir.path().to_path_buf(),
            cgroup_procs: Vec::new(),
            user: None,
            umask: 0o027,
        };
        let (code, out, err) = run(&step);
        assert_eq!(code, 3);
        assert!(out.contains("FERRY_TEST=yes"), "{out}");
        assert!(
            !out.contains("CARGO"),
            "the worker's environment leaked: {out}"
        );
        assert!(
            out.contains(&format!("pwd={}", dir.path().display())),
            "{out}"
        );
        let pid = out.split("pid=").nth(1).unwrap().lines().next().unwrap();
        assert!(out.contains(&format!("pgid={pid}")), "its own group: {out}");
        assert!(out.contains("0027"), "{out}");
        assert!(out.contains("stdin=empty"), "{out}");
        assert_eq!(err.trim(), "oops");
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut step = StepProcess {
            program: "no-such-program-here".into(),
            args: Vec::new(),
            env: env(),
            cwd: dir.path().to_path_buf(),
            cgroup_procs: Vec::new(),
            user: None,
            umask: 0o022,
        };
        let error = spawn(&step).unwrap_err();
        assert!(
            error.to_string().contains("no-such-program-here"),
            "{error}"
        );
        // Found but not executable: the child's execve fails and says why.
        std::fs::write(dir.path().join("data.txt"), "x").unwrap();
        step.program = "./data.txt".into();
        let error = spawn(&step).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EACCES), "{error}");
        // A cgroup file that cannot be written stops the start.
        step.program = "true".into();
        step.cgroup_procs = vec![CString::new("/nonexistent/cgroup.procs").unwrap()];
        let error = spawn(&step).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT), "{error}");
    }
}
