//! Defines every `wasi_snapshot_preview1` import on a wasmtime linker.
//!
//! Parameters arrive as the core-wasm types of the preview1 ABI (`i32` for
//! 32-bit values and pointers, `i64` for 64-bit values) and are reinterpreted
//! as unsigned here; every function returns the errno as `i32`.

use wasmtime::{Caller, Extern, Linker};

use super::ctx::{Handle, WasiCtx};
use super::errno::Errno;
use super::poll;
use super::types::Mem;
use super::GuestExit;
use crate::store::StoreData;

const M: &str = "wasi_snapshot_preview1";

/// Runs `f` with the guest memory and the WASI context; maps the outcome to
/// an errno. A guest without an exported memory gets `EFAULT`.
pub(crate) fn with_mem<F>(caller: &mut Caller<'_, StoreData>, f: F) -> wasmtime::Result<i32>
where
    F: FnOnce(&mut Mem<'_>, &mut WasiCtx) -> Result<(), Errno>,
{
    let memory = match caller.get_export("memory") {
        Some(Extern::Memory(m)) => m,
        _ => return Ok(Errno::Fault.raw()),
    };
    let (data, store) = memory.data_and_store_mut(&mut *caller);
    let mut mem = Mem::new(data);
    Ok(match f(&mut mem, &mut store.wasi) {
        Ok(()) => 0,
        Err(e) => e.raw(),
    })
}

fn with_ctx<F>(caller: &mut Caller<'_, StoreData>, f: F) -> wasmtime::Result<i32>
where
    F: FnOnce(&mut WasiCtx) -> Result<(), Errno>,
{
    Ok(match f(&mut caller.data_mut().wasi) {
        Ok(()) => 0,
        Err(e) => e.raw(),
    })
}

type C<'a> = Caller<'a, StoreData>;

/// Defines all `wasi_snapshot_preview1` functions on `linker`.
pub fn add_to_linker(linker: &mut Linker<StoreData>) -> anyhow::Result<()> {
    // ----- args, environ, clocks, random, scheduling, process --------------
    linker.func_wrap(M, "args_get", |mut c: C<'_>, argv: i32, buf: i32| {
        with_mem(&mut c, |m, w| w.args_get(m, argv as u32, buf as u32))
    })?;
    linker.func_wrap(M, "args_sizes_get", |mut c: C<'_>, n: i32, size: i32| {
        with_mem(&mut c, |m, w| w.args_sizes_get(m, n as u32, size as u32))
    })?;
    linker.func_wrap(M, "environ_get", |mut c: C<'_>, envp: i32, buf: i32| {
        with_mem(&mut c, |m, w| w.environ_get(m, envp as u32, buf as u32))
    })?;
    linker.func_wrap(M, "environ_sizes_get", |mut c: C<'_>, n: i32, size: i32| {
        with_mem(&mut c, |m, w| w.environ_sizes_get(m, n as u32, size as u32))
    })?;
    linker.func_wrap(M, "clock_res_get", |mut c: C<'_>, id: i32, out: i32| {
        with_mem(&mut c, |m, w| w.clock_res_get(m, id as u32, out as u32))
    })?;
    linker.func_wrap(
        M,
        "clock_time_get",
        |mut c: C<'_>, id: i32, _precision: i64, out: i32| {
            with_mem(&mut c, |m, w| w.clock_time_get(m, id as u32, out as u32))
        },
    )?;
    linker.func_wrap(M, "random_get", |mut c: C<'_>, buf: i32, len: i32| {
        with_mem(&mut c, |m, w| w.random_get(m, buf as u32, len as u32))
    })?;
    linker.func_wrap(M, "sched_yield", |_c: C<'_>| -> wasmtime::Result<i32> {
        std::thread::yield_now();
        Ok(0)
    })?;
    linker.func_wrap(
        M,
        "proc_exit",
        |mut c: C<'_>, code: i32| -> wasmtime::Result<()> {
            let w = &mut c.data_mut().wasi;
            w.exit_status = Some(code);
            let _ = w.flush();
            Err(wasmtime::Error::new(GuestExit(code)))
        },
    )?;
    linker.func_wrap(
        M,
        "proc_raise",
        |_c: C<'_>, _sig: i32| -> wasmtime::Result<i32> { Ok(Errno::Nosys.raw()) },
    )?;
    linker.func_wrap(
        M,
        "poll_oneoff",
        |mut c: C<'_>, inp: i32, out: i32, n: i32, nevents: i32| {
            poll::poll_oneoff(&mut c, inp as u32, out as u32, n as u32, nevents as u32)
        },
    )?;

    // ----- descriptors -------------------------------------------------------
    linker.func_wrap(
        M,
        "fd_advise",
        |mut c: C<'_>, fd: i32, off: i64, len: i64, advice: i32| {
            with_ctx(&mut c, |w| {
                w.fd_advise(fd as u32, off as u64, len as u64, advice as u8)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "fd_allocate",
        |mut c: C<'_>, fd: i32, off: i64, len: i64| {
            with_ctx(&mut c, |w| w.fd_allocate(fd as u32, off as u64, len as u64))
        },
    )?;
    linker.func_wrap(M, "fd_close", |mut c: C<'_>, fd: i32| {
        with_ctx(&mut c, |w| w.fd_close(fd as u32))
    })?;
    linker.func_wrap(M, "fd_datasync", |mut c: C<'_>, fd: i32| {
        with_ctx(&mut c, |w| w.fd_sync(fd as u32, true))
    })?;
    linker.func_wrap(M, "fd_sync", |mut c: C<'_>, fd: i32| {
        with_ctx(&mut c, |w| w.fd_sync(fd as u32, false))
    })?;
    linker.func_wrap(M, "fd_fdstat_get", |mut c: C<'_>, fd: i32, out: i32| {
        with_mem(&mut c, |m, w| w.fd_fdstat_get(m, fd as u32, out as u32))
    })?;
    linker.func_wrap(
        M,
        "fd_fdstat_set_flags",
        |mut c: C<'_>, fd: i32, flags: i32| {
            with_ctx(&mut c, |w| w.fd_fdstat_set_flags(fd as u32, flags as u16))
        },
    )?;
    linker.func_wrap(
        M,
        "fd_fdstat_set_rights",
        |mut c: C<'_>, fd: i32, base: i64, inh: i64| {
            with_ctx(&mut c, |w| {
                w.fd_fdstat_set_rights(fd as u32, base as u64, inh as u64)
            })
        },
    )?;
    linker.func_wrap(M, "fd_filestat_get", |mut c: C<'_>, fd: i32, out: i32| {
        with_mem(&mut c, |m, w| w.fd_filestat_get(m, fd as u32, out as u32))
    })?;
    linker.func_wrap(
        M,
        "fd_filestat_set_size",
        |mut c: C<'_>, fd: i32, size: i64| {
            with_ctx(&mut c, |w| w.fd_filestat_set_size(fd as u32, size as u64))
        },
    )?;
    linker.func_wrap(
        M,
        "fd_filestat_set_times",
        |mut c: C<'_>, fd: i32, atim: i64, mtim: i64, flags: i32| {
            with_ctx(&mut c, |w| {
                w.fd_filestat_set_times(fd as u32, atim as u64, mtim as u64, flags as u16)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "fd_pread",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, off: i64, out: i32| {
            with_mem(&mut c, |m, w| {
                w.fd_pread(m, fd as u32, iovs as u32, n as u32, off as u64, out as u32)
            })
        },
    )?;
    linker.func_wrap(M, "fd_prestat_get", |mut c: C<'_>, fd: i32, out: i32| {
        with_mem(&mut c, |m, w| w.fd_prestat_get(m, fd as u32, out as u32))
    })?;
    linker.func_wrap(
        M,
        "fd_prestat_dir_name",
        |mut c: C<'_>, fd: i32, buf: i32, len: i32| {
            with_mem(&mut c, |m, w| {
                w.fd_prestat_dir_name(m, fd as u32, buf as u32, len as u32)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "fd_pwrite",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, off: i64, out: i32| {
            with_mem(&mut c, |m, w| {
                w.fd_pwrite(m, fd as u32, iovs as u32, n as u32, off as u64, out as u32)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "fd_read",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, out: i32| {
            let is_stdin = matches!(
                c.data().wasi.fds.get(&(fd as u32)).map(|e| &e.handle),
                Some(Handle::Stdin)
            );
            if is_stdin {
                poll::fd_read_stdin(&mut c, fd as u32, iovs as u32, n as u32, out as u32)
            } else {
                with_mem(&mut c, |m, w| {
                    w.fd_read(m, fd as u32, iovs as u32, n as u32, out as u32)
                })
            }
        },
    )?;
    linker.func_wrap(
        M,
        "fd_readdir",
        |mut c: C<'_>, fd: i32, buf: i32, len: i32, cookie: i64, out: i32| {
            with_mem(&mut c, |m, w| {
                w.fd_readdir(
                    m,
                    fd as u32,
                    buf as u32,
                    len as u32,
                    cookie as u64,
                    out as u32,
                )
            })
        },
    )?;
    linker.func_wrap(M, "fd_renumber", |mut c: C<'_>, from: i32, to: i32| {
        with_ctx(&mut c, |w| w.fd_renumber(from as u32, to as u32))
    })?;
    linker.func_wrap(
        M,
        "fd_seek",
        |mut c: C<'_>, fd: i32, delta: i64, whence: i32, out: i32| {
            with_mem(&mut c, |m, w| {
                let whence = u8::try_from(whence).map_err(|_| Errno::Inval)?;
                w.fd_seek(m, fd as u32, delta, whence, out as u32)
            })
        },
    )?;
    linker.func_wrap(M, "fd_tell", |mut c: C<'_>, fd: i32, out: i32| {
        with_mem(&mut c, |m, w| w.fd_tell(m, fd as u32, out as u32))
    })?;
    linker.func_wrap(
        M,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, out: i32| {
            with_mem(&mut c, |m, w| {
                w.fd_write(m, fd as u32, iovs as u32, n as u32, out as u32)
            })
        },
    )?;

    // ----- paths ---------------------------------------------------------------
    linker.func_wrap(
        M,
        "path_create_directory",
        |mut c: C<'_>, fd: i32, p: i32, pl: i32| {
            with_mem(&mut c, |m, w| {
                let path = m.path(p as u32, pl as u32)?;
                w.path_create_directory(fd as u32, &path)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "path_filestat_get",
        |mut c: C<'_>, fd: i32, flags: i32, p: i32, pl: i32, out: i32| {
            with_mem(&mut c, |m, w| {
                let path = m.path(p as u32, pl as u32)?;
                w.path_filestat_get(m, fd as u32, flags as u32, &path, out as u32)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "path_filestat_set_times",
        |mut c: C<'_>, fd: i32, flags: i32, p: i32, pl: i32, atim: i64, mtim: i64, fst: i32| {
            with_mem(&mut c, |m, w| {
                let path = m.path(p as u32, pl as u32)?;
                w.path_filestat_set_times(
                    fd as u32,
                    flags as u32,
                    &path,
                    atim as u64,
                    mtim as u64,
                    fst as u16,
                )
            })
        },
    )?;
    linker.func_wrap(
        M,
        "path_link",
        |mut c: C<'_>, ofd: i32, oflags: i32, op: i32, opl: i32, nfd: i32, np: i32, npl: i32| {
            with_mem(&mut c, |m, w| {
                let old = m.path(op as u32, opl as u32)?;
                let new = m.path(np as u32, npl as u32)?;
                w.path_link(ofd as u32, oflags as u32, &old, nfd as u32, &new)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "path_open",
        |mut c: C<'_>,
         fd: i32,
         dirflags: i32,
         p: i32,
         pl: i32,
         oflags: i32,
         base: i64,
         inh: i64,
         fdflags: i32,
         out: i32| {
            with_mem(&mut c, |m, w| {
                let path = m.path(p as u32, pl as u32)?;
                // Check the result pointer before opening anything.
                m.slice(out as u32, 4)?;
                let new = w.path_open(
                    fd as u32,
                    dirflags as u32,
                    &path,
                    oflags as u16,
                    base as u64,
                    inh as u64,
                    fdflags as u16,
                )?;
                m.write_u32(out as u32, new)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "path_readlink",
        |mut c: C<'_>, fd: i32, p: i32, pl: i32, buf: i32, len: i32, out: i32| {
            with_mem(&mut c, |m, w| {
                let path = m.path(p as u32, pl as u32)?;
                w.path_readlink(m, fd as u32, &path, buf as u32, len as u32, out as u32)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "path_remove_directory",
        |mut c: C<'_>, fd: i32, p: i32, pl: i32| {
            with_mem(&mut c, |m, w| {
                let path = m.path(p as u32, pl as u32)?;
                w.path_remove_directory(fd as u32, &path)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "path_rename",
        |mut c: C<'_>, fd: i32, op: i32, opl: i32, nfd: i32, np: i32, npl: i32| {
            with_mem(&mut c, |m, w| {
                let old = m.path(op as u32, opl as u32)?;
                let new = m.path(np as u32, npl as u32)?;
                w.path_rename(fd as u32, &old, nfd as u32, &new)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "path_symlink",
        |mut c: C<'_>, op: i32, opl: i32, fd: i32, np: i32, npl: i32| {
            with_mem(&mut c, |m, w| {
                let old = m.path(op as u32, opl as u32)?;
                let new = m.path(np as u32, npl as u32)?;
                w.path_symlink(&old, fd as u32, &new)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "path_unlink_file",
        |mut c: C<'_>, fd: i32, p: i32, pl: i32| {
            with_mem(&mut c, |m, w| {
                let path = m.path(p as u32, pl as u32)?;
                w.path_unlink_file(fd as u32, &path)
            })
        },
    )?;

    // ----- sockets: not supported yet ------------------------------------------
    linker.func_wrap(
        M,
        "sock_accept",
        |mut c: C<'_>, fd: i32, _flags: i32, _out: i32| sock(&mut c, fd),
    )?;
    linker.func_wrap(
        M,
        "sock_recv",
        |mut c: C<'_>, fd: i32, _ri: i32, _ril: i32, _rf: i32, _ro: i32, _rof: i32| {
            sock(&mut c, fd)
        },
    )?;
    linker.func_wrap(
        M,
        "sock_send",
        |mut c: C<'_>, fd: i32, _si: i32, _sil: i32, _sf: i32, _so: i32| sock(&mut c, fd),
    )?;
    linker.func_wrap(M, "sock_shutdown", |mut c: C<'_>, fd: i32, _how: i32| {
        sock(&mut c, fd)
    })?;
    Ok(())
}

/// Sockets are not supported yet, so no descriptor is a socket: a closed
/// descriptor is `EBADF`, an open one `ENOTSOCK` (what POSIX and the
/// conformance suite expect for a non-socket).
fn sock(c: &mut C<'_>, fd: i32) -> wasmtime::Result<i32> {
    with_ctx(c, |w| {
        w.entry(fd as u32)?;
        Err(Errno::Notsock)
    })
}
