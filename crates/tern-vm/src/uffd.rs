//! userfaultfd, the thin layer over the kernel's interface: the UAPI
//! structures and ioctl numbers, opening a descriptor, and the two uses
//! Tern makes of it.
//!
//! * Asynchronous write-protect plus `PAGEMAP_SCAN` ([`Uffd`]): dirty-page
//!   tracking for pre-copy ([`crate::dirty`]).
//! * Missing-page faults ([`Missing`]): post-copy, where a guest runs before
//!   its memory arrived and each first touch of a page waits for it
//!   ([`crate::lazy`]).
//!
//! This is one of Tern's few `unsafe` modules: every block says why it holds.

/// userfaultfd asynchronous write-protect and `PAGEMAP_SCAN`, on Linux
/// architectures whose ioctl numbers use the generic encoding.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "s390x"
    )
))]
mod imp {
    use crate::dirty::{DirtyError, TRACK_PAGE};
    use std::ffi::c_int;
    use std::fs::File;
    use std::io;
    use std::mem::size_of;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::fs::OpenOptionsExt;

    // Kernel UAPI, include/uapi/linux/userfaultfd.h and (Linux 6.7+)
    // include/uapi/linux/fs.h. All fields are __u64.

    /// `struct uffdio_api`.
    #[repr(C)]
    #[derive(Debug, Default)]
    pub(crate) struct UffdioApi {
        pub api: u64,
        pub features: u64,
        pub ioctls: u64,
    }

    /// `struct uffdio_range`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(crate) struct UffdioRange {
        pub start: u64,
        pub len: u64,
    }

    /// `struct uffdio_register`.
    #[repr(C)]
    #[derive(Debug, Default)]
    pub(crate) struct UffdioRegister {
        pub range: UffdioRange,
        pub mode: u64,
        pub ioctls: u64,
    }

    /// `struct uffdio_writeprotect`.
    #[repr(C)]
    #[derive(Debug, Default)]
    pub(crate) struct UffdioWriteprotect {
        pub range: UffdioRange,
        pub mode: u64,
    }

    /// `struct pm_scan_arg`.
    #[repr(C)]
    #[derive(Debug, Default)]
    pub(crate) struct PmScanArg {
        pub size: u64,
        pub flags: u64,
        pub start: u64,
        pub end: u64,
        pub walk_end: u64,
        pub vec: u64,
        pub vec_len: u64,
        pub max_pages: u64,
        pub category_inverted: u64,
        pub category_mask: u64,
        pub category_anyof_mask: u64,
        pub return_mask: u64,
    }

    /// `struct page_region`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(crate) struct PageRegion {
        pub start: u64,
        pub end: u64,
        pub categories: u64,
    }

    const _: () = assert!(size_of::<UffdioApi>() == 24);
    const _: () = assert!(size_of::<UffdioRange>() == 16);
    const _: () = assert!(size_of::<UffdioRegister>() == 32);
    const _: () = assert!(size_of::<UffdioWriteprotect>() == 24);
    const _: () = assert!(size_of::<PmScanArg>() == 96);
    const _: () = assert!(size_of::<PageRegion>() == 24);

    /// `_IOC` with the generic (asm-generic/ioctl.h) layout.
    const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
        (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
    }
    const IOC_NONE: u32 = 0;
    const IOC_WRITE: u32 = 1;
    const IOC_READ: u32 = 2;

    const UFFDIO: u8 = 0xAA;
    const UFFD_API: u64 = 0xAA;
    const UFFD_USER_MODE_ONLY: c_int = 1;
    pub(crate) const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
    pub(crate) const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
    const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
    const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
    /// Bit of `_UFFDIO_WRITEPROTECT` (0x06) in `uffdio_register.ioctls`.
    const UFFDIO_WRITEPROTECT_BIT: u64 = 1 << 0x06;

    pub(crate) const USERFAULTFD_IOC_NEW: u32 = ioc(IOC_NONE, UFFDIO, 0x00, 0);
    pub(crate) const UFFDIO_API: u32 =
        ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x3F, size_of::<UffdioApi>());
    pub(crate) const UFFDIO_REGISTER: u32 = ioc(
        IOC_READ | IOC_WRITE,
        UFFDIO,
        0x00,
        size_of::<UffdioRegister>(),
    );
    pub(crate) const UFFDIO_UNREGISTER: u32 = ioc(IOC_READ, UFFDIO, 0x01, size_of::<UffdioRange>());
    pub(crate) const UFFDIO_WRITEPROTECT: u32 = ioc(
        IOC_READ | IOC_WRITE,
        UFFDIO,
        0x06,
        size_of::<UffdioWriteprotect>(),
    );
    pub(crate) const PAGEMAP_SCAN: u32 =
        ioc(IOC_READ | IOC_WRITE, b'f', 16, size_of::<PmScanArg>());

    pub(crate) const PAGE_IS_WRITTEN: u64 = 1 << 1;
    pub(crate) const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
    pub(crate) const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

    /// Output regions per `PAGEMAP_SCAN` call; the scan loops when full.
    const REGIONS: usize = 512;

    pub(crate) fn host_page() -> usize {
        rustix::param::page_size()
    }

    /// A userfaultfd in asynchronous write-protect mode and a pagemap fd.
    pub(crate) struct Uffd {
        uffd: OwnedFd,
        pagemap: OwnedFd,
        regions: Vec<PageRegion>,
    }

    /// `ioctl(fd, request, arg)` for requests whose argument is a pointer to
    /// `T`.
    ///
    /// # Safety
    ///
    /// `request` must be an ioctl whose argument is a `*mut T` that the kernel
    /// reads and writes as one `T` (its size is encoded in `request` and
    /// checked against the UAPI above), and any pointer inside `arg` must be
    /// valid as that ioctl requires.
    unsafe fn ioctl<T>(fd: &OwnedFd, request: u32, arg: &mut T) -> io::Result<c_int> {
        // SAFETY: forwarded from this function's contract; `arg` is a live,
        // exclusive `T` for the duration of the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, arg as *mut T) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    fn own(fd: c_int) -> io::Result<OwnedFd> {
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel as a new descriptor
        // and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    fn sys_userfaultfd(flags: c_int) -> io::Result<OwnedFd> {
        // SAFETY: userfaultfd(2) takes one int of flags, touches no memory of
        // ours and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        own(fd as c_int)
    }

    fn dev_userfaultfd(flags: c_int) -> io::Result<OwnedFd> {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/userfaultfd")?;
        // SAFETY: USERFAULTFD_IOC_NEW takes the new descriptor's flags as an
        // int by value (not a pointer) and returns a new descriptor or -1.
        let fd = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                USERFAULTFD_IOC_NEW as libc::Ioctl,
                flags as libc::c_ulong,
            )
        };
        own(fd)
    }

    /// A new userfaultfd: the system call, then (unprivileged, with
    /// `vm.unprivileged_userfaultfd = 0`) the user-mode-only variant, which
    /// changes nothing for asynchronous write-protect since no fault is ever
    /// delivered to user space, then `/dev/userfaultfd`.
    pub(crate) fn open_fd(extra_flags: c_int) -> Result<OwnedFd, DirtyError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | extra_flags;
        let first = match sys_userfaultfd(flags) {
            Ok(fd) => return Ok(fd),
            Err(e) => e,
        };
        if let Ok(fd) = sys_userfaultfd(flags | UFFD_USER_MODE_ONLY) {
            return Ok(fd);
        }
        dev_userfaultfd(flags).map_err(|_| DirtyError::UffdOpen(first))
    }

    fn handshake(fd: &OwnedFd, features: u64) -> Result<UffdioApi, DirtyError> {
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`.
        unsafe { ioctl(fd, UFFDIO_API, &mut api) }.map_err(DirtyError::UffdApi)?;
        Ok(api)
    }

    impl Uffd {
        /// Opens a userfaultfd with asynchronous write-protect and the
        /// pagemap; tracks nothing yet.
        pub(crate) fn open() -> Result<Uffd, DirtyError> {
            Self::open_with(0)
        }

        pub(crate) fn open_with(extra_flags: c_int) -> Result<Uffd, DirtyError> {
            const WANT: u64 = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
            // UFFDIO_API succeeds once per descriptor: ask a throwaway one
            // what the kernel offers, for a clear error on old kernels.
            let offered = handshake(&open_fd(extra_flags)?, 0)?.features;
            if offered & UFFD_FEATURE_WP_ASYNC == 0 {
                return Err(DirtyError::UffdFeatures(
                    "asynchronous userfaultfd write-protect",
                ));
            }
            if offered & UFFD_FEATURE_WP_UNPOPULATED == 0 {
                return Err(DirtyError::UffdFeatures(
                    "userfaultfd write-protect of unpopulated pages",
                ));
            }
            let uffd = open_fd(extra_flags)?;
            handshake(&uffd, WANT)?;
            let pagemap: OwnedFd = File::open("/proc/self/pagemap")
                .map_err(DirtyError::Pagemap)?
                .into();
            let mut u = Uffd {
                uffd,
                pagemap,
                regions: vec![PageRegion::default(); REGIONS],
            };
            // An empty scan: ENOTTY before Linux 6.7.
            let mut probe = Vec::new();
            u.scan_range(0, 0, 0, &mut probe).map_err(|e| match e {
                DirtyError::Scan(e) if e.raw_os_error() == Some(libc::ENOTTY) => {
                    DirtyError::UffdFeatures("the PAGEMAP_SCAN ioctl")
                }
                e => e,
            })?;
            Ok(u)
        }

        /// Registers `[start, start + len)` for write-protect tracking and
        /// write-protects it. Async write-protect never blocks or signals a
        /// writer: a write just clears the protection, so this cannot affect
        /// what any code observes in the memory.
        pub(crate) fn track(&self, start: usize, len: usize) -> Result<(), DirtyError> {
            if len == 0 {
                return Ok(());
            }
            let range = UffdioRange {
                start: start as u64,
                len: len as u64,
            };
            let mut reg = UffdioRegister {
                range,
                mode: UFFDIO_REGISTER_MODE_WP,
                ioctls: 0,
            };
            // SAFETY: UFFDIO_REGISTER reads and writes one `struct
            // uffdio_register`; the range is only an address range to it.
            unsafe { ioctl(&self.uffd, UFFDIO_REGISTER, &mut reg) }
                .map_err(DirtyError::UffdRegister)?;
            if reg.ioctls & UFFDIO_WRITEPROTECT_BIT == 0 {
                return Err(DirtyError::UffdRegister(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this memory cannot be write-protected",
                )));
            }
            let mut wp = UffdioWriteprotect {
                range,
                mode: UFFDIO_WRITEPROTECT_MODE_WP,
            };
            // SAFETY: UFFDIO_WRITEPROTECT reads and writes one `struct
            // uffdio_writeprotect`.
            unsafe { ioctl(&self.uffd, UFFDIO_WRITEPROTECT, &mut wp) }
                .map_err(DirtyError::WriteProtect)?;
            Ok(())
        }

        /// Appends to `out` the indices (from `base`) of the pages of
        /// `[base, base + len)` written since they were last protected, and
        /// protects them again.
        pub(crate) fn scan(
            &mut self,
            base: usize,
            len: usize,
            out: &mut Vec<u32>,
        ) -> Result<(), DirtyError> {
            let mut at = base;
            while at < base + len {
                at = self.scan_range(base, at, base + len, out)?;
            }
            Ok(())
        }

        /// One `PAGEMAP_SCAN` of `[from, to)`; returns where it stopped (before
        /// `to` when the output vector filled up).
        fn scan_range(
            &mut self,
            base: usize,
            from: usize,
            to: usize,
            out: &mut Vec<u32>,
        ) -> Result<usize, DirtyError> {
            let mut arg = PmScanArg {
                size: size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                start: from as u64,
                end: to as u64,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                category_mask: PAGE_IS_WRITTEN,
                return_mask: PAGE_IS_WRITTEN,
                ..PmScanArg::default()
            };
            // SAFETY: PAGEMAP_SCAN reads and writes one `struct pm_scan_arg`
            // and writes at most `vec_len` `struct page_region`s to `vec`,
            // which points at `self.regions`, exclusively borrowed here and
            // exactly that long.
            let n = unsafe { ioctl(&self.pagemap, PAGEMAP_SCAN, &mut arg) }
                .map_err(DirtyError::Scan)? as usize;
            let bad = || DirtyError::Scan(io::Error::other("the kernel's answer is out of range"));
            for r in self.regions.get(..n).ok_or_else(bad)? {
                let (start, end) = (r.start as usize, r.end as usize);
                if start < from || end > to || start > end {
                    return Err(bad());
                }
                let first = (start - base) / TRACK_PAGE;
                let last = (end - base).div_ceil(TRACK_PAGE);
                out.extend((first..last).map(|p| p as u32));
            }
            let walk_end = arg.walk_end as usize;
            if from < to && (walk_end <= from || walk_end > to) {
                return Err(bad());
            }
            Ok(walk_end)
        }

        /// Unprotects and unregisters `[start, start + len)`. Errors are
        /// ignored: closing the descriptor afterwards releases everything too.
        pub(crate) fn release(&self, start: usize, len: usize) {
            if len == 0 {
                return;
            }
            let range = UffdioRange {
                start: start as u64,
                len: len as u64,
            };
            let mut wp = UffdioWriteprotect { range, mode: 0 };
            // SAFETY: UFFDIO_WRITEPROTECT reads and writes one `struct
            // uffdio_writeprotect`; mode 0 removes the protection.
            let _ = unsafe { ioctl(&self.uffd, UFFDIO_WRITEPROTECT, &mut wp) };
            let mut range = range;
            // SAFETY: UFFDIO_UNREGISTER reads one `struct uffdio_range`.
            let _ = unsafe { ioctl(&self.uffd, UFFDIO_UNREGISTER, &mut range) };
        }
    }

    /// `struct uffdio_copy`.
    #[repr(C)]
    #[derive(Debug, Default)]
    pub(crate) struct UffdioCopy {
        pub dst: u64,
        pub src: u64,
        pub len: u64,
        pub mode: u64,
        pub copy: i64,
    }

    /// `struct uffdio_zeropage`.
    #[repr(C)]
    #[derive(Debug, Default)]
    pub(crate) struct UffdioZeropage {
        pub range: UffdioRange,
        pub mode: u64,
        pub zeropage: i64,
    }

    /// `struct uffd_msg` for a page fault: `event`, padding, then the
    /// `pagefault` member of the union (`flags`, `address`, `ptid`).
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(crate) struct UffdMsg {
        pub event: u8,
        pub reserved1: u8,
        pub reserved2: u16,
        pub reserved3: u32,
        pub flags: u64,
        pub address: u64,
        pub ptid: u64,
    }

    const _: () = assert!(size_of::<UffdioCopy>() == 40);
    const _: () = assert!(size_of::<UffdioZeropage>() == 32);
    const _: () = assert!(size_of::<UffdMsg>() == 32);

    const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
    const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
    /// Bit of `_UFFDIO_COPY` (0x03) in `uffdio_register.ioctls`.
    const UFFDIO_COPY_BIT: u64 = 1 << 0x03;
    pub(crate) const UFFDIO_COPY: u32 =
        ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x03, size_of::<UffdioCopy>());
    pub(crate) const UFFDIO_ZEROPAGE: u32 = ioc(
        IOC_READ | IOC_WRITE,
        UFFDIO,
        0x04,
        size_of::<UffdioZeropage>(),
    );

    /// A userfaultfd in missing-page mode over one range: the first touch
    /// of a page not yet placed blocks the toucher (guest code, host code or
    /// the kernel on its behalf) and is read here as a fault, until
    /// [`Missing::copy`] or [`Missing::zero`] places the page and wakes it.
    /// Dropping it unregisters the range: pages never placed then read as
    /// zero, so the owner must place every page first (or not let the
    /// memory be used again).
    pub(crate) struct Missing {
        fd: OwnedFd,
        start: usize,
        len: usize,
    }

    impl Missing {
        /// Registers `[start, start + len)` (host-page aligned, currently
        /// unpopulated). The descriptor handles faults from the kernel too
        /// (no user-mode-only fallback: a `read(2)` into guest memory must
        /// wait for its page, not fail).
        pub(crate) fn register(start: usize, len: usize) -> io::Result<Missing> {
            let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
            let fd = sys_userfaultfd(flags)
                .or_else(|first| dev_userfaultfd(flags).map_err(|_| first))?;
            let mut api = UffdioApi {
                api: UFFD_API,
                features: 0,
                ioctls: 0,
            };
            // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`.
            unsafe { ioctl(&fd, UFFDIO_API, &mut api) }?;
            let mut reg = UffdioRegister {
                range: UffdioRange {
                    start: start as u64,
                    len: len as u64,
                },
                mode: UFFDIO_REGISTER_MODE_MISSING,
                ioctls: 0,
            };
            // SAFETY: UFFDIO_REGISTER reads and writes one `struct
            // uffdio_register`; the range is only an address range to it.
            unsafe { ioctl(&fd, UFFDIO_REGISTER, &mut reg) }?;
            if reg.ioctls & UFFDIO_COPY_BIT == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "pages cannot be placed into this memory (UFFDIO_COPY)",
                ));
            }
            Ok(Missing { fd, start, len })
        }

        /// The descriptor, readable when a fault is pending (for `poll`).
        pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
            use std::os::fd::AsFd;
            self.fd.as_fd()
        }

        /// Appends the address of every pending fault to `out`, without
        /// blocking.
        pub(crate) fn faults(&self, out: &mut Vec<usize>) -> io::Result<()> {
            let mut msgs = [UffdMsg::default(); 16];
            loop {
                // SAFETY: reads at most `size_of_val(&msgs)` bytes into
                // `msgs`, plain integers for which any bytes are valid.
                let n = unsafe {
                    libc::read(
                        self.fd.as_raw_fd(),
                        msgs.as_mut_ptr().cast(),
                        std::mem::size_of_val(&msgs),
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    return match e.kind() {
                        io::ErrorKind::WouldBlock => Ok(()),
                        io::ErrorKind::Interrupted => continue,
                        _ => Err(e),
                    };
                }
                let got = n as usize / size_of::<UffdMsg>();
                for m in &msgs[..got] {
                    if m.event == UFFD_EVENT_PAGEFAULT {
                        out.push(m.address as usize);
                    }
                }
                if got < msgs.len() {
                    return Ok(());
                }
            }
        }

        fn check(&self, dst: usize, len: usize) -> io::Result<()> {
            if dst < self.start
                || dst
                    .checked_add(len)
                    .is_none_or(|e| e > self.start + self.len)
            {
                return Err(io::Error::other("page outside the registered range"));
            }
            Ok(())
        }

        /// Places `src` at `dst` (page aligned, whole pages) and wakes who
        /// waits on those pages. Pages already there are left as they are;
        /// returns how many bytes were placed.
        pub(crate) fn copy(&self, dst: usize, src: &[u8]) -> io::Result<usize> {
            self.check(dst, src.len())?;
            place_all(src.len(), |done| {
                let mut c = UffdioCopy {
                    dst: (dst + done) as u64,
                    src: src[done..].as_ptr() as u64,
                    len: (src.len() - done) as u64,
                    mode: 0,
                    copy: 0,
                };
                // SAFETY: UFFDIO_COPY reads and writes one `struct
                // uffdio_copy`; it reads `len` bytes at `src`, which is
                // `src[done..]`, borrowed for the call, and writes only into
                // the registered range (checked above).
                let r = unsafe { ioctl(&self.fd, UFFDIO_COPY, &mut c) };
                (r, c.copy)
            })
        }

        /// Places zero pages over `[dst, dst + len)`, as [`Missing::copy`]
        /// does with bytes.
        pub(crate) fn zero(&self, dst: usize, len: usize) -> io::Result<usize> {
            self.check(dst, len)?;
            place_all(len, |done| {
                let mut z = UffdioZeropage {
                    range: UffdioRange {
                        start: (dst + done) as u64,
                        len: (len - done) as u64,
                    },
                    mode: 0,
                    zeropage: 0,
                };
                // SAFETY: UFFDIO_ZEROPAGE reads and writes one `struct
                // uffdio_zeropage` and maps zero pages only into the
                // registered range (checked above).
                let r = unsafe { ioctl(&self.fd, UFFDIO_ZEROPAGE, &mut z) };
                (r, z.zeropage)
            })
        }
    }

    /// Runs `place(done)` (one UFFDIO_COPY or ZEROPAGE from byte `done`,
    /// returning the ioctl's result and the bytes it placed) until `len`
    /// bytes are covered: a page already there (EEXIST) is skipped, a
    /// partial placement (EAGAIN) goes on. Returns the bytes placed.
    fn place_all(
        len: usize,
        mut place: impl FnMut(usize) -> (io::Result<c_int>, i64),
    ) -> io::Result<usize> {
        let page = host_page();
        let mut done = 0;
        let mut placed = 0;
        while done < len {
            let (r, n) = place(done);
            let n = n.max(0) as usize;
            done += n;
            placed += n;
            match r {
                Ok(_) => {}
                // The page at `done` is there already: skip it.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => done += page,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(placed)
    }

    impl Drop for Missing {
        fn drop(&mut self) {
            let mut range = UffdioRange {
                start: self.start as u64,
                len: self.len as u64,
            };
            // SAFETY: UFFDIO_UNREGISTER reads one `struct uffdio_range`.
            let _ = unsafe { ioctl(&self.fd, UFFDIO_UNREGISTER, &mut range) };
        }
    }
}

/// Stand-in where userfaultfd tracking is not built: it cannot be opened, so
/// a `Uffd` never exists.
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "s390x"
    )
)))]
mod imp {
    use crate::dirty::DirtyError;
    use std::convert::Infallible;

    pub(crate) struct Uffd(Infallible);

    pub(crate) fn host_page() -> usize {
        crate::dirty::TRACK_PAGE
    }

    /// Missing-page faults are not built here: never registered.
    pub(crate) struct Missing(Infallible);

    impl Missing {
        pub(crate) fn register(_start: usize, _len: usize) -> std::io::Result<Missing> {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "userfaultfd is not built for this platform",
            ))
        }
        pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
            match self.0 {}
        }
        pub(crate) fn faults(&self, _out: &mut Vec<usize>) -> std::io::Result<()> {
            match self.0 {}
        }
        pub(crate) fn copy(&self, _dst: usize, _src: &[u8]) -> std::io::Result<usize> {
            match self.0 {}
        }
        pub(crate) fn zero(&self, _dst: usize, _len: usize) -> std::io::Result<usize> {
            match self.0 {}
        }
    }

    impl Uffd {
        pub(crate) fn open() -> Result<Uffd, DirtyError> {
            Err(DirtyError::Unsupported)
        }
        pub(crate) fn track(&self, _start: usize, _len: usize) -> Result<(), DirtyError> {
            match self.0 {}
        }
        pub(crate) fn scan(
            &mut self,
            _base: usize,
            _len: usize,
            _out: &mut Vec<u32>,
        ) -> Result<(), DirtyError> {
            match self.0 {}
        }
        pub(crate) fn release(&self, _start: usize, _len: usize) {
            match self.0 {}
        }
    }
}

pub(crate) use imp::*;
