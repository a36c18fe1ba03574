//! What Linux says about this process under /proc and /sys/fs/cgroup: its threads,
//! descriptors and memory, and the limits on them. `/metrics` reads it when scraped; the
//! nudger reads the two cheap counts every few milliseconds; the hang-up thread lists the
//! descriptors. Where a file is missing (no /proc, cgroup v1, a sandbox), a figure is 0 or
//! `None`, never an error: none of them is needed to serve.

use std::collections::HashSet;
use std::ffi::c_int;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where cgroup v2 is mounted, in the host's view and in a container's.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The process's thread count: the link count of /proc/self/task, which Linux reports as two
/// plus the number of threads. One `stat` costs a few microseconds, where reading
/// /proc/self/status cost about a hundred here. 0 where /proc is missing.
pub fn thread_count() -> usize {
    let links = std::fs::metadata("/proc/self/task").map_or(0, |task| task.nlink());
    usize::try_from(links.saturating_sub(2)).unwrap_or(usize::MAX)
}

/// The process's open descriptors: the size Linux (6.2 and later) reports for /proc/self/fd.
/// `None` where it reports 0 (older kernels) or /proc is missing.
pub fn descriptor_count() -> Option<usize> {
    let size = std::fs::metadata("/proc/self/fd").map_or(0, |fd| fd.len());
    usize::try_from(size).ok().filter(|&n| n > 0)
}

/// Figures for `/metrics`, read at scrape time.
pub struct Figures {
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    /// Open sockets, listening ones included, each counted once however many descriptors
    /// refer to it.
    pub sockets: u64,
    pub threads: u64,
    /// The tightest limit on our threads that we can see (`threads_max`).
    pub max_threads: Option<u64>,
}

impl Figures {
    pub fn read() -> Figures {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let resident_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let mut open_fds = 0;
        // Sockets by inode: tiny_http keeps two descriptors of each connection's socket (one
        // to read, one to write), and the listening socket has one per accept loop.
        let mut sockets = HashSet::new();
        for descriptor in descriptors().into_iter().flatten().flatten() {
            open_fds += 1;
            sockets.extend(descriptor.socket_inode);
        }
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        // The kernel does not hold root to RLIMIT_NPROC.
        let root = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0");
        let limits_that_bind = if root { "" } else { limits.as_str() };
        Figures {
            resident_bytes,
            open_fds,
            max_fds: soft_limit(&limits, "Max open files"),
            sockets: sockets.len() as u64,
            threads: thread_count() as u64,
            max_threads: threads_max(limits_that_bind, &cgroup, Path::new(CGROUP_ROOT)),
        }
    }
}

/// One of our open descriptors, as /proc/self/fd lists it.
pub struct Descriptor {
    pub fd: c_int,
    /// The inode of the socket it is, if it is one.
    pub socket_inode: Option<u64>,
}

/// Our open descriptors, each read from /proc/self/fd as the iteration reaches it (so one may
/// be closed, or its number reused, by the time it is looked at). An error where /proc cannot
/// be read, or for an entry that cannot.
pub fn descriptors() -> io::Result<impl Iterator<Item = io::Result<Descriptor>>> {
    Ok(std::fs::read_dir("/proc/self/fd")?.map(|entry| {
        let entry = entry?;
        let fd = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
            .ok_or_else(|| io::Error::other("a name in /proc/self/fd that is not a number"))?;
        let socket_inode = std::fs::read_link(entry.path())
            .ok()
            .and_then(|target| socket_inode(&target.to_string_lossy()));
        Ok(Descriptor { fd, socket_inode })
    }))
}

/// The inode of a socket, from the target of its link in /proc/self/fd ("socket:[12345]").
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The tightest limit on this process's threads that it can see: the `pids.max` of its cgroup
/// and of each ancestor visible under `cgroup_root` (systemd's `TasksMax`, a container's pids
/// limit), and `RLIMIT_NPROC` from `limits` (the caller leaves it out for root, whom the
/// kernel does not hold to it). Both count more than our threads: a cgroup's limit counts
/// every task in it (under systemd or in a container, ours alone), and `RLIMIT_NPROC` every
/// thread of our user. A limit on a cgroup above the one a container sees as its root (a
/// Kubernetes pod's) is out of sight. `None` where none is set.
fn threads_max(limits: &str, cgroup: &str, cgroup_root: &Path) -> Option<u64> {
    let nproc = soft_limit(limits, "Max processes");
    let pids = cgroup_dirs(cgroup, cgroup_root)
        .into_iter()
        .filter_map(|dir| {
            let text = std::fs::read_to_string(dir.join("pids.max")).ok()?;
            text.trim().parse::<u64>().ok()
        })
        .min();
    [nproc, pids].into_iter().flatten().min()
}

/// The soft limit on the line of /proc/self/limits that starts with `name`; `None` when it is
/// "unlimited" or the line is missing.
fn soft_limit(limits: &str, name: &str) -> Option<u64> {
    let rest = limits.lines().find_map(|l| l.strip_prefix(name))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The directories that hold our cgroup's `pids.max` and its ancestors', deepest first, under
/// `cgroup_root`: cgroup v2's (the `0::` line of /proc/self/cgroup, the hierarchy mounted at
/// the root) and cgroup v1's pids controller (a line naming `pids`, mounted under the names
/// of its controllers: `pids/`, or `cpu,pids/` when mounted with another).
/// Inside a cgroup namespace the path is "/", and the root is the container's own cgroup.
/// In a container without one (cgroup v1), the path is the host's and names no directory
/// under the container's mount, whose root, the container's own cgroup, is still read.
fn cgroup_dirs(cgroup: &str, cgroup_root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for line in cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let mut dir = if id == "0" && controllers.is_empty() {
            cgroup_root.to_path_buf()
        } else if controllers.split(',').any(|c| c == "pids") {
            cgroup_root.join(controllers)
        } else {
            continue;
        };
        let mut these = vec![dir.clone()];
        // A path that starts with ".." names a cgroup outside our cgroup namespace, which its
        // mount does not show: only the root is read then.
        let parts: Vec<&str> = path.trim().split('/').filter(|p| !p.is_empty()).collect();
        if !parts.iter().any(|p| *p == ".." || *p == ".") {
            for part in parts {
                dir.push(part);
                these.push(dir.clone());
            }
        }
        these.reverse();
        dirs.extend(these);
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max processes             4096                 8192                 processes
Max open files            1024                 524288               files
";

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fibd-process-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn soft_limits_are_read_by_name_and_unlimited_is_none() {
        assert_eq!(soft_limit(LIMITS, "Max processes"), Some(4096));
        assert_eq!(soft_limit(LIMITS, "Max open files"), Some(1024));
        assert_eq!(soft_limit(LIMITS, "Max cpu time"), None);
        assert_eq!(soft_limit(LIMITS, "Max locked memory"), None);
        assert_eq!(soft_limit("", "Max processes"), None);
    }

    #[test]
    fn the_cgroup_and_its_ancestors_are_listed_deepest_first() {
        let root = Path::new("/cg");
        let dirs = cgroup_dirs("0::/system.slice/fibd.service\n", root);
        assert_eq!(
            dirs,
            ["/cg/system.slice/fibd.service", "/cg/system.slice", "/cg"].map(PathBuf::from)
        );
        // Inside a cgroup namespace.
        assert_eq!(cgroup_dirs("0::/\n", root), [PathBuf::from("/cg")]);
        // cgroup v1's pids controller, alone or with others, beside a v2 hierarchy without
        // controllers; other v1 controllers are not looked at.
        let hybrid = "8:pids:/user.slice\n4:memory:/x\n3:cpu,pids:/y\n0::/\n";
        assert_eq!(
            cgroup_dirs(hybrid, root),
            [
                "/cg/pids/user.slice",
                "/cg/pids",
                "/cg/cpu,pids/y",
                "/cg/cpu,pids",
                "/cg"
            ]
            .map(PathBuf::from)
        );
        assert!(cgroup_dirs("4:memory:/user.slice\nnonsense\n", root).is_empty());
        // A cgroup outside our namespace: only the root we see.
        assert_eq!(
            cgroup_dirs("0::/../../elsewhere\n", root),
            [PathBuf::from("/cg")]
        );
    }

    #[test]
    fn the_thread_limit_is_the_tightest_of_the_cgroups_and_rlimit_nproc() {
        let root = temp_dir("cgroup");
        fs::create_dir_all(root.join("pod/app")).unwrap();
        fs::write(root.join("pids.max"), "max\n").unwrap();
        fs::write(root.join("pod/pids.max"), "300\n").unwrap();
        fs::write(root.join("pod/app/pids.max"), "max\n").unwrap();
        let cgroup = "0::/pod/app\n";
        // The pod's limit is below RLIMIT_NPROC's 4096, and a parent's limit binds its children.
        assert_eq!(threads_max(LIMITS, cgroup, &root), Some(300));
        fs::write(root.join("pod/pids.max"), "max\n").unwrap();
        assert_eq!(threads_max(LIMITS, cgroup, &root), Some(4096));
        let unlimited = LIMITS.replace("4096 ", "unlimited ");
        assert_eq!(threads_max(&unlimited, cgroup, &root), None);
        // A cgroup file that cannot be read is no limit, not an error.
        assert_eq!(threads_max(LIMITS, "0::/elsewhere\n", &root), Some(4096));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn sockets_are_known_by_their_inode() {
        assert_eq!(socket_inode("socket:[123456]"), Some(123_456));
        assert_eq!(socket_inode("pipe:[123456]"), None);
        assert_eq!(socket_inode("/var/lib/fibd/fibd.state"), None);
        assert_eq!(socket_inode("socket:[12"), None);
    }

    #[test]
    fn this_process_is_counted() {
        let (release, parked) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || parked.recv());
        // Other tests' threads may come and go, so only the two known ones are counted on.
        assert!(thread_count() >= 2, "thread count {}", thread_count());
        let figures = Figures::read();
        assert!(figures.threads >= 2);
        assert!(figures.resident_bytes > 0);
        assert!(figures.open_fds >= 3);
        release.send(()).unwrap();
        other.join().unwrap().unwrap();
    }
}
