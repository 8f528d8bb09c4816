//! The directory a site serves, opened once; every file is opened relative
//! to that handle with openat2(2), so nothing a request names can leave
//! it, whatever happens to the paths meanwhile (no check-then-open race).

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

/// What a request may name under the root, and how it is opened.
pub struct RootDir(OwnedFd);

impl RootDir {
    pub fn open(path: &Path) -> io::Result<Self> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the root path"))?;
        // SAFETY: a valid NUL-terminated path; the fd is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The regular file a request path names, opened for reading; None
    /// for anything else. Refused: empty or hidden components (a leading
    /// '.': dotfiles, `..`), paths that resolve outside the root (absolute
    /// or escaping symlinks, /proc magic links), and anything not a
    /// regular file (directories, FIFOs, devices, sockets). Opening never
    /// blocks, so a FIFO under the root cannot hold a thread. A path
    /// ending in '/' names its index.html.
    pub fn open_file(&self, request_path: &str) -> Option<File> {
        let mut relative = request_path.trim_start_matches('/').to_string();
        if relative.is_empty() || relative.ends_with('/') {
            relative.push_str("index.html");
        }
        if relative
            .split('/')
            .any(|c| c.is_empty() || c.starts_with('.'))
        {
            return None;
        }
        let c = CString::new(relative).ok()?;
        // SAFETY: open_how is plain data; zero is a valid start.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: valid pointers for the call; the fd is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.0.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        file.metadata().ok()?.is_file().then_some(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_visible_files_beneath_the_root() {
        let base = std::env::temp_dir().join(format!("qx-root-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.txt"), b"a").unwrap();
        std::fs::write(root.join("sub/index.html"), b"i").unwrap();
        std::fs::write(root.join(".secret"), b"key").unwrap();
        std::fs::write(base.join("outside.txt"), b"o").unwrap();
        std::os::unix::fs::symlink(base.join("outside.txt"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink("a.txt", root.join("inside")).unwrap();
        std::os::unix::fs::symlink("../outside.txt", root.join("relative-escape")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        let dir = RootDir::open(&root).unwrap();
        let read = |p: &str| {
            dir.open_file(p)
                .map(|mut f| std::io::read_to_string(&mut f).unwrap())
        };
        assert_eq!(read("/a.txt").as_deref(), Some("a"));
        assert_eq!(
            read("/inside").as_deref(),
            Some("a"),
            "a symlink within the root"
        );
        assert_eq!(
            read("/sub/").as_deref(),
            Some("i"),
            "a directory's index.html"
        );
        for refused in [
            "/.secret",
            "/../outside.txt",
            "/sub/../a.txt",
            "/escape",
            "/relative-escape",
            "/fifo",
            "/sub",
            "/",
            "/sub//index.html",
            "/missing",
            "/proc/self/root/etc/passwd",
        ] {
            assert!(read(refused).is_none(), "{refused} was served");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
