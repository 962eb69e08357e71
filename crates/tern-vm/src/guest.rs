//! A guest: one running (or paused) instance of a prepared module.

use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tern_image::{Global as SavedGlobal, GlobalValue, ImageRef, ImageView, Meta, TransformId};
use tern_prepare::{Prepared, GLOBAL_EXPORT_PREFIX, PAUSE_EXPORT};
use wasmtime::{Caller, Global, Instance, Linker, Memory, Module, Store, TypedFunc, Val};

use crate::engine::Runtime;
use crate::host::SavedHost;
use crate::limits::{GuestLimiter, LimitHit, Limits};
use crate::memory::MemoryHandle;
use crate::store::{Control, StoreData};
use crate::suspend::{self, AsyncifyFns, Entry, PendingCall};
use crate::wasi::{GuestExit, OutputSink, WasiCtx};
use crate::VmError;

/// How a call to [`Guest::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest exited with this status.
    Exited(i32),
    /// The guest is paused at a migration point; it can be captured and
    /// resumed (here with [`Guest::run`] again, or elsewhere from its image).
    Paused,
}

/// Asks a running guest to pause at its next migration point. `Send + Sync`.
#[derive(Clone)]
pub struct PauseHandle {
    control: Arc<Control>,
}

impl PauseHandle {
    /// Requests the pause; the guest's [`Guest::run`] then returns
    /// [`Outcome::Paused`] (or the guest exits first). This raises the
    /// flag its migration points read (see `crate::memory::PauseFlag`).
    pub fn request(&self) {
        self.control.set_pause(true);
    }
}

/// What capture wrote.
#[derive(Debug, Clone)]
pub struct CaptureStats {
    /// Bytes of the image.
    pub image_bytes: u64,
    /// Linear memory size in bytes.
    pub memory_bytes: u64,
    /// Non-zero 4 KiB pages stored.
    pub pages: u64,
    /// Bytes of the unwound stack.
    pub stack_bytes: u64,
}

/// A guest instance.
pub struct Guest {
    store: Store<StoreData>,
    /// For compiling continuation modules when a `tern-unwind` guest resumes.
    runtime: Runtime,
    instance: Instance,
    start: TypedFunc<(), ()>,
    memory: Memory,
    /// The `tern_pause` global: with inline points (`tern-unwind`), how
    /// many points to pass before stopping.
    skip: Option<Global>,
    globals: Vec<(String, Global)>,
    module: Arc<[u8]>,
    transform: TransformId,
    original_digest: [u8; 32],
    prepared_digest: [u8; 32],
    guest_id: String,
    generation: u64,
    /// The unwound stack and the call it left, while paused or before the
    /// first run after a restore.
    parked: Option<(Vec<u8>, PendingCall)>,
    /// The continuation built for `parked` ahead of the run (by a restore,
    /// so that its cost is part of the restore): its entry and the global
    /// that takes the buffer address.
    continuation: Option<(TypedFunc<(), ()>, Global)>,
    exited: Option<i32>,
    /// The limits the guest runs under (saved with it).
    limits: Limits,
}

/// Registers Tern's migration point, `tern.yield`.
pub(crate) fn add_yield_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    linker.func_wrap(
        tern_prepare::YIELD_IMPORT.0,
        tern_prepare::YIELD_IMPORT.1,
        |mut caller: Caller<'_, StoreData>| -> wasmtime::Result<()> {
            match suspend::enter_import(&mut caller)? {
                Entry::Rewound(_) => Ok(()),
                Entry::Fresh => {
                    if caller.data().inline_points {
                        // The point found the flag raised and no points
                        // left to pass: it is unwinding already.
                        suspend::suspend(&mut caller, PendingCall::Yield)
                    } else if caller.data().pause_requested() && caller.data().skip_points > 0 {
                        // Pass this point; the flag stays raised.
                        caller.data_mut().skip_points -= 1;
                        Ok(())
                    } else if caller.data().pause_requested() {
                        suspend::suspend(&mut caller, PendingCall::Yield)
                    } else {
                        // Raised for a pause served meanwhile: go on.
                        Ok(())
                    }
                }
            }
        },
    )?;
    Ok(())
}

fn new_guest_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = blake3::hash(format!("{nanos}-{}", std::process::id()).as_bytes());
    tern_prepare::hex(&h.as_bytes()[..6])
}

fn export_func<P, R>(
    instance: &Instance,
    store: &mut Store<StoreData>,
    name: &str,
) -> Result<TypedFunc<P, R>, VmError>
where
    P: wasmtime::WasmParams,
    R: wasmtime::WasmResults,
{
    instance
        .get_typed_func::<P, R>(&mut *store, name)
        .map_err(|_| VmError::NotPrepared(format!("no usable export `{name}`")))
}

impl Guest {
    fn instantiate(
        rt: &Runtime,
        module: &Module,
        mut wasi: WasiCtx,
        limits: &Limits,
    ) -> Result<(Store<StoreData>, Instance), VmError> {
        check_initial_memory(module, limits)?;
        wasi.set_max_fds(limits.max_fds);
        let mut data = StoreData::new(wasi);
        data.limiter = GuestLimiter::new(limits);
        let mut store = Store::new(&rt.engine, data);
        store.limiter(|d| &mut d.limiter);
        let instance = rt.linker.instantiate(&mut store, module).map_err(|e| {
            match store.data().limiter.hit {
                Some(hit @ LimitHit::Memory { .. }) => {
                    VmError::Limit(format!("the module's initial memory exceeds its {hit}"))
                }
                _ => VmError::Instantiate(e.to_string()),
            }
        })?;
        Ok((store, instance))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        mut store: Store<StoreData>,
        instance: Instance,
        runtime: &Runtime,
        module: Arc<[u8]>,
        transform: TransformId,
        original_digest: [u8; 32],
        prepared_digest: [u8; 32],
        guest_id: String,
        limits: Limits,
    ) -> Result<Guest, VmError> {
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| VmError::NotPrepared("no exported memory".into()))?;
        let skip = instance.get_global(&mut store, PAUSE_EXPORT);
        let fns = match skip {
            Some(_) => Some(AsyncifyFns {
                memory,
                start_unwind: export_func(&instance, &mut store, "asyncify_start_unwind")?,
                stop_unwind: export_func(&instance, &mut store, "asyncify_stop_unwind")?,
                start_rewind: export_func(&instance, &mut store, "asyncify_start_rewind")?,
                stop_rewind: export_func(&instance, &mut store, "asyncify_stop_rewind")?,
                get_state: export_func(&instance, &mut store, "asyncify_get_state")?,
            }),
            None => None,
        };
        let start = export_func(&instance, &mut store, "_start")?;
        let mut globals = Vec::new();
        let exports: Vec<String> = instance
            .exports(&mut store)
            .map(|e| e.name().to_string())
            .collect();
        for name in exports {
            if name.starts_with(GLOBAL_EXPORT_PREFIX) {
                if let Some(g) = instance.get_global(&mut store, &name) {
                    globals.push((name, g));
                }
            }
        }
        globals.sort_by(|a, b| a.0.cmp(&b.0));
        store.data_mut().suspend.fns = fns;
        store.data_mut().inline_points = transform.name == tern_prepare::unwind::TRANSFORM_NAME;
        if let Some(flag) = crate::memory::pause_flag(memory.data_ptr(&store)) {
            store.data().control.attach_flag(flag);
        } else if skip.is_some() {
            return Err(VmError::NotPrepared(
                "the guest's memory has no pause flag page (not Tern's 4 GiB reservation)".into(),
            ));
        }
        Ok(Guest {
            store,
            runtime: runtime.clone(),
            instance,
            start,
            memory,
            skip,
            globals,
            module,
            transform,
            original_digest,
            prepared_digest,
            guest_id,
            generation: 0,
            parked: None,
            continuation: None,
            exited: None,
            limits,
        })
    }

    /// Boots a new guest from a prepared module, with the default
    /// [`Limits`].
    pub fn boot(rt: &Runtime, prepared: &Prepared, wasi: WasiCtx) -> Result<Guest, VmError> {
        Self::boot_with(rt, prepared, wasi, Limits::default())
    }

    /// Boots a new guest from a prepared module under `limits`. A module
    /// whose initial memory already exceeds the memory limit is refused
    /// ([`VmError::Limit`]).
    pub fn boot_with(
        rt: &Runtime,
        prepared: &Prepared,
        wasi: WasiCtx,
        limits: Limits,
    ) -> Result<Guest, VmError> {
        let module = rt.compile(&prepared.module, &prepared.prepared_digest)?;
        let (store, instance) = Self::instantiate(rt, &module, wasi, &limits)?;
        Self::assemble(
            store,
            instance,
            rt,
            Arc::from(prepared.module.as_slice()),
            tern_image::TransformId {
                name: prepared.transform.name.clone(),
                version: prepared.transform.version.clone(),
            },
            prepared.original_digest,
            prepared.prepared_digest,
            new_guest_id(),
            limits,
        )
    }

    /// Boots an *unprepared* module: it runs exactly as on plain wasmtime
    /// (same engine, memory and WASI host) but cannot be paused or captured.
    /// For comparisons and benchmarks. Runs under the default [`Limits`]
    /// ([`Guest::set_limits`] changes them).
    pub fn boot_original(rt: &Runtime, wasm: &[u8], wasi: WasiCtx) -> Result<Guest, VmError> {
        let limits = Limits::default();
        let digest = tern_prepare::digest(wasm);
        let module = rt.compile(wasm, &digest)?;
        let (store, instance) = Self::instantiate(rt, &module, wasi, &limits)?;
        Self::assemble(
            store,
            instance,
            rt,
            Arc::from(wasm),
            tern_image::TransformId {
                name: "none".into(),
                version: "none".into(),
            },
            digest,
            digest,
            new_guest_id(),
            limits,
        )
    }

    /// Rebuilds a paused guest from an image; [`Guest::run`] resumes it.
    /// Everything is checked and built before anything runs: on error no
    /// guest code has executed and no output was written.
    pub fn restore(
        rt: &Runtime,
        image: &ImageView<'_>,
        stdout: OutputSink,
        stderr: OutputSink,
    ) -> Result<Guest, VmError> {
        // Files first: a missing or changed file fails before any compiling.
        let host = SavedHost::decode(image.host).map_err(VmError::HostState)?;
        let wasi = WasiCtx::restore(&host.wasi, stdout, stderr).map_err(VmError::Restore)?;
        let mut incoming = Incoming::new(rt, image.module, &image.meta)?;
        incoming.load_memory(image)?;
        incoming.finish_with(&image.globals, image.stack.to_vec(), host, wasi)
    }

    fn load_globals(&mut self, saved: &[SavedGlobal]) -> Result<(), VmError> {
        if saved.len() != self.globals.len() {
            return Err(VmError::Incompatible(format!(
                "image has {} globals, module has {}",
                saved.len(),
                self.globals.len()
            )));
        }
        for s in saved {
            let Some((_, g)) = self.globals.iter().find(|(n, _)| *n == s.name) else {
                return Err(VmError::Incompatible(format!(
                    "module has no global `{}`",
                    s.name
                )));
            };
            let val = match s.value {
                GlobalValue::I32(v) => Val::I32(v as i32),
                GlobalValue::I64(v) => Val::I64(v as i64),
                GlobalValue::F32(v) => Val::F32(v),
                GlobalValue::F64(v) => Val::F64(v),
                GlobalValue::V128(v) => Val::V128(v.into()),
            };
            g.set(&mut self.store, val)
                .map_err(|e| VmError::Incompatible(format!("global `{}`: {e}", s.name)))?;
        }
        Ok(())
    }

    /// Requests a pause at the migration point `n` points from now (0: the
    /// next one), counting only points the guest really reaches, so that
    /// the moment is the same in every run: for tests that capture a guest
    /// at chosen places. Until then every point the guest reaches takes
    /// its slow path, so it runs slower meanwhile.
    pub fn pause_after_points(&mut self, n: u64) -> Result<(), VmError> {
        if self.skip.is_none() {
            return Err(VmError::NotPrepared("the guest cannot pause".into()));
        }
        self.store.data_mut().skip_points = n;
        self.store.data().control.set_pause(true);
        self.set_skip()
    }

    /// Sets what inline points count down (see [`StoreData::skip_points`]):
    /// the points to pass before a requested pause. With Asyncify the host
    /// counts them in `tern.yield`.
    fn set_skip(&mut self) -> Result<(), VmError> {
        let Some(g) = self.skip else {
            return Ok(());
        };
        let data = self.store.data();
        let n = if data.inline_points {
            i32::try_from(data.skip_points).unwrap_or(i32::MAX)
        } else {
            0
        };
        g.set(&mut self.store, Val::I32(n))
            .map_err(|e| VmError::Trap(e.to_string()))
    }

    /// A handle to request a pause from another thread.
    pub fn pause_handle(&self) -> PauseHandle {
        PauseHandle {
            control: self.store.data().control.clone(),
        }
    }

    /// The limits the guest runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Changes the guest's limits (e.g. a restore given new ones). Fails,
    /// changing nothing, when the guest's memory is already larger than
    /// the new memory limit; descriptors already open beyond a lower
    /// descriptor limit stay open.
    pub fn set_limits(&mut self, limits: Limits) -> Result<(), VmError> {
        let have = self.memory.data_size(&self.store) as u64;
        if let Some(max) = limits.max_memory {
            if have > max {
                return Err(VmError::Limit(format!(
                    "the guest's memory of {} exceeds the memory limit of {}",
                    crate::limits::size(have),
                    crate::limits::size(max)
                )));
            }
        }
        let data = self.store.data_mut();
        data.limiter.max_memory = GuestLimiter::new(&limits).max_memory;
        data.wasi.set_max_fds(limits.max_fds);
        self.limits = limits;
        Ok(())
    }

    /// The last limit the guest ran into since it started (or was restored
    /// here): memory or table growth refused, or an open refused for the
    /// descriptor limit. Callers use it to say that a guest that then
    /// failed ended by its limit.
    pub fn limit_hit(&self) -> Option<LimitHit> {
        let data = self.store.data();
        data.limiter.hit.or_else(|| {
            data.wasi.fds_refused().then_some(LimitHit::Fds {
                limit: self.limits.max_fds,
            })
        })
    }

    /// The guest's id.
    pub fn id(&self) -> &str {
        &self.guest_id
    }

    /// True while paused (after [`Outcome::Paused`], or restored and not yet run).
    pub fn is_paused(&self) -> bool {
        self.parked.is_some()
    }

    /// Runs (or resumes) the guest until it exits or pauses.
    pub fn run(&mut self) -> Result<Outcome, VmError> {
        if let Some(code) = self.exited {
            return Ok(Outcome::Exited(code));
        }
        let mut resume = None;
        if let Some((blob, pending)) = self.parked.take() {
            if self.transform.name == tern_prepare::unwind::TRANSFORM_NAME {
                // Rewound by continuation copies (tern_prepare::resume).
                let (entry, buffer) = match self.continuation.take() {
                    Some(ready) => ready,
                    None => self.continuation(&blob)?,
                };
                let addr = suspend::open_for_copies(&mut self.store, &blob, pending)
                    .map_err(|e| VmError::Rewind(e.to_string()))?;
                buffer
                    .set(&mut self.store, Val::I32(addr))
                    .map_err(|e| VmError::Rewind(e.to_string()))?;
                resume = Some(entry);
            } else {
                suspend::start_rewind(&mut self.store, &blob, pending)
                    .map_err(|e| VmError::Rewind(e.to_string()))?;
            }
        }
        self.set_skip()?;
        let result = match resume {
            Some(entry) => entry.call(&mut self.store, ()),
            None => self.start.call(&mut self.store, ()),
        };
        match result {
            Ok(()) => match suspend::finish_unwind(&mut self.store) {
                Ok(Some(parked)) => {
                    // The request is served; one made while paused (before
                    // running again) stays for the next run.
                    self.store.data().control.set_pause(false);
                    self.store.data_mut().skip_points = 0;
                    self.parked = Some(parked);
                    Ok(Outcome::Paused)
                }
                Ok(None) => {
                    self.exited = Some(0);
                    Ok(Outcome::Exited(0))
                }
                Err(e) => Err(VmError::Unwind(e.to_string())),
            },
            Err(e) => {
                if let Some(GuestExit(code)) = e.downcast_ref::<GuestExit>() {
                    self.exited = Some(*code);
                    return Ok(Outcome::Exited(*code));
                }
                Err(VmError::Trap(trap_message(&e)))
            }
        }
    }

    /// Builds, compiles (through the compile cache, in parallel) and
    /// instantiates the continuation copies for the saved stack `blob`,
    /// chained in stack order; returns the outermost copy and the global
    /// that must hold the unwind buffer's address before it is called.
    fn continuation(&mut self, blob: &[u8]) -> Result<(TypedFunc<(), ()>, Global), VmError> {
        use tern_prepare::resume;
        use wasmtime::{GlobalType, Mutability, Ref, RefType, Table, TableType, ValType};
        let bad = |e: String| VmError::Rewind(e);
        let t0 = Instant::now();
        let frames = resume::frames(blob).map_err(|e| bad(e.to_string()))?;
        let cont = resume::build(&self.module, &frames).map_err(|e| bad(e.to_string()))?;
        let t1 = Instant::now();
        let rt = &self.runtime;
        let modules: Vec<Result<Module, VmError>> = std::thread::scope(|s| {
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
            let chunk = cont.copies.len().div_ceil(workers).max(1);
            let handles: Vec<_> = cont
                .copies
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|(_, bytes)| rt.compile(bytes, &tern_prepare::digest(bytes)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        vec![Err(VmError::Compile("compiler thread panicked".into()))]
                    })
                })
                .collect()
        });
        let t2 = Instant::now();
        let i32_mut = GlobalType::new(ValType::I32, Mutability::Var);
        let buffer = Global::new(&mut self.store, i32_mut.clone(), Val::I32(0))
            .map_err(|e| bad(e.to_string()))?;
        let depth =
            Global::new(&mut self.store, i32_mut, Val::I32(0)).map_err(|e| bad(e.to_string()))?;
        let n = u32::try_from(cont.chain.len()).map_err(|_| bad("the stack is too deep".into()))?;
        let chain = Table::new(
            &mut self.store,
            TableType::new(RefType::FUNCREF, n, Some(n)),
            Ref::Func(None),
        )
        .map_err(|e| bad(e.to_string()))?;
        let mut copies = Vec::with_capacity(modules.len());
        for module in modules {
            let module = module?;
            let mut imports = Vec::new();
            for imp in module.imports() {
                let ext: wasmtime::Extern = match (imp.module(), imp.name()) {
                    (resume::RESUME_MODULE, resume::CHAIN_TABLE) => chain.into(),
                    (resume::RESUME_MODULE, resume::BUFFER_GLOBAL) => buffer.into(),
                    (resume::RESUME_MODULE, resume::DEPTH_GLOBAL) => depth.into(),
                    (_, name) => self
                        .instance
                        .get_export(&mut self.store, name)
                        .ok_or_else(|| bad(format!("the guest has no export `{name}`")))?,
                };
                imports.push(ext);
            }
            let inst = Instance::new(&mut self.store, &module, &imports)
                .map_err(|e| bad(format!("instantiating a continuation copy: {e}")))?;
            let f = inst
                .get_func(&mut self.store, resume::COPY_EXPORT)
                .ok_or_else(|| bad("a continuation copy exports no function".into()))?;
            copies.push(f);
        }
        for (d, &j) in cont.chain.iter().enumerate() {
            chain
                .set(&mut self.store, d as u64, Ref::Func(Some(copies[j])))
                .map_err(|e| bad(e.to_string()))?;
        }
        if std::env::var_os("TERN_RESUME_STATS").is_some() {
            eprintln!(
                "resume: {} frames, {} copies, {} bytes; built in {:.1} ms, compiled (or loaded) in {:.1} ms, linked in {:.1} ms",
                frames.len(),
                cont.copies.len(),
                cont.copies.iter().map(|(_, b)| b.len()).sum::<usize>(),
                (t1 - t0).as_secs_f64() * 1e3,
                (t2 - t1).as_secs_f64() * 1e3,
                t2.elapsed().as_secs_f64() * 1e3
            );
        }
        let entry = copies[cont.chain[0]]
            .typed::<(), ()>(&self.store)
            .map_err(|e| bad(e.to_string()))?;
        Ok((entry, buffer))
    }

    fn saved_globals(&mut self) -> Result<Vec<SavedGlobal>, VmError> {
        let mut out = Vec::with_capacity(self.globals.len());
        for (name, g) in &self.globals {
            let value = match g.get(&mut self.store) {
                Val::I32(v) => GlobalValue::I32(v as u32),
                Val::I64(v) => GlobalValue::I64(v as u64),
                Val::F32(v) => GlobalValue::F32(v),
                Val::F64(v) => GlobalValue::F64(v),
                Val::V128(v) => GlobalValue::V128(v.as_u128()),
                _ => {
                    return Err(VmError::Capture(format!(
                        "global `{name}` holds a reference, which cannot be saved"
                    )))
                }
            };
            out.push(SavedGlobal {
                name: name.clone(),
                value,
            });
        }
        Ok(out)
    }

    /// The metadata an image of this guest made now would carry.
    pub fn meta(&self) -> Meta {
        Meta {
            tern_version: env!("CARGO_PKG_VERSION").to_string(),
            transform: self.transform.clone(),
            original_digest: self.original_digest,
            prepared_digest: self.prepared_digest,
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            source_arch: std::env::consts::ARCH.to_string(),
            guest_id: self.guest_id.clone(),
        }
    }

    /// The prepared module the guest runs.
    pub fn module(&self) -> Arc<[u8]> {
        self.module.clone()
    }

    /// A handle to the guest's memory for other threads (pre-copy).
    pub fn memory_handle(&self) -> Result<MemoryHandle, VmError> {
        crate::memory::handle_for(self.memory.data_ptr(&self.store))
            .ok_or_else(|| VmError::Memory("guest memory is not a Tern mapping".into()))
    }

    /// The paused guest's state except memory: what an image or a migration
    /// stream carries beside the pages.
    pub fn capture(&mut self) -> Result<Captured, VmError> {
        let Some((stack, pending)) = self.parked.clone() else {
            return Err(VmError::Capture("the guest is not paused".into()));
        };
        let globals = self.saved_globals()?;
        let host = SavedHost {
            version: crate::host::HOST_STATE_VERSION,
            guest_id: self.guest_id.clone(),
            wasi: self.store.data_mut().wasi.save(),
            pending,
            generation: self.generation,
            limits: self.limits,
        };
        let meta = self.meta();
        Ok(Captured {
            meta,
            module: self.module.clone(),
            globals,
            stack,
            host: host.encode(),
            memory_size: self.memory.data_size(&self.store) as u64,
        })
    }

    /// Writes the paused guest's image to `path` (atomically).
    pub fn save_image(&mut self, path: &Path) -> Result<CaptureStats, VmError> {
        let c = self.capture()?;
        let memory = self.memory.data(&self.store);
        let image = ImageRef {
            meta: &c.meta,
            module: &c.module,
            memory,
            globals: &c.globals,
            stack: &c.stack,
            host: &c.host,
        };
        let stats =
            tern_image::write_file(path, &image).map_err(|e| VmError::Capture(e.to_string()))?;
        Ok(CaptureStats {
            image_bytes: stats.bytes_written,
            memory_bytes: memory.len() as u64,
            pages: stats.pages_present,
            stack_bytes: c.stack.len() as u64,
        })
    }
}

/// A paused guest's state apart from its memory (see [`Guest::capture`]).
#[derive(Debug, Clone)]
pub struct Captured {
    /// Image metadata: versions, digests, guest id.
    pub meta: Meta,
    /// The prepared module.
    pub module: Arc<[u8]>,
    /// Every exported mutable global.
    pub globals: Vec<SavedGlobal>,
    /// The unwound stack.
    pub stack: Vec<u8>,
    /// The encoded host state ([`SavedHost`]).
    pub host: Vec<u8>,
    /// Linear memory size in bytes.
    pub memory_size: u64,
}

/// A guest being rebuilt: compiled and instantiated, its memory filled in
/// piece by piece (from an image, or page by page from a migration stream
/// while the source still runs), then finished with its globals, stack and
/// host state into a paused [`Guest`].
pub struct Incoming {
    guest: Guest,
}

impl Incoming {
    /// Checks that this build can resume a guest made by `meta`'s transform,
    /// compiles `module` and instantiates it with zeroed memory.
    pub fn new(rt: &Runtime, module: &[u8], meta: &Meta) -> Result<Incoming, VmError> {
        if !tern_prepare::resumable(&meta.transform.name, &meta.transform.version) {
            return Err(VmError::Incompatible(format!(
                "made by transform {} {}, this build resumes {}",
                meta.transform.name,
                meta.transform.version,
                tern_prepare::resumable_description()
            )));
        }
        if tern_prepare::digest(module) != meta.prepared_digest {
            return Err(VmError::Incompatible(
                "module digest does not match the image metadata".into(),
            ));
        }
        let placeholder =
            WasiCtx::new(Default::default()).map_err(|e| VmError::Instantiate(e.to_string()))?;
        let compiled = rt.compile(module, &meta.prepared_digest)?;
        // No limits while the memory is filled in: the guest's own come
        // with its host state (`finish`).
        let unlimited = Limits {
            max_fds: u32::MAX,
            ..Limits::default()
        };
        let (store, instance) = Guest::instantiate(rt, &compiled, placeholder, &unlimited)?;
        let mut guest = Guest::assemble(
            store,
            instance,
            rt,
            Arc::from(module),
            meta.transform.clone(),
            meta.original_digest,
            meta.prepared_digest,
            meta.guest_id.clone(),
            unlimited,
        )?;
        // Instantiation wrote the data segments: start from all zeroes.
        let mem = guest.memory.data_mut(&mut guest.store);
        let len = mem.len();
        crate::memory::zero_range(mem, 0, len).map_err(|e| VmError::Memory(e.to_string()))?;
        Ok(Incoming { guest })
    }

    /// Grows memory to `bytes` (a multiple of the 64 KiB wasm page). Memory
    /// never shrinks: a smaller size than the module's minimum is an error.
    pub fn set_memory_size(&mut self, bytes: u64) -> Result<(), VmError> {
        let g = &mut self.guest;
        let want = usize::try_from(bytes)
            .map_err(|_| VmError::Incompatible("memory too large for this host".into()))?;
        let have = g.memory.data_size(&g.store);
        if want < have {
            return Err(VmError::Incompatible(format!(
                "memory of {want} bytes is smaller than the guest's {have} bytes"
            )));
        }
        if want > have {
            let pages = ((want - have) / 65536) as u64;
            g.memory
                .grow(&mut g.store, pages)
                .map_err(|e| VmError::Incompatible(format!("growing memory failed: {e}")))?;
        }
        Ok(())
    }

    /// The memory being filled in.
    pub fn memory_mut(&mut self) -> &mut [u8] {
        self.guest.memory.data_mut(&mut self.guest.store)
    }

    /// Fills memory from an image.
    pub fn load_memory(&mut self, image: &ImageView<'_>) -> Result<(), VmError> {
        self.set_memory_size(image.memory_size())?;
        let mem = self.memory_mut();
        image
            .write_memory_into(mem)
            .map_err(|e| VmError::Memory(e.to_string()))?;
        Ok(())
    }

    /// Finishes the guest from its captured globals, stack and encoded host
    /// state, with new output sinks. Checks the guest's files first.
    pub fn finish(
        self,
        globals: &[SavedGlobal],
        stack: Vec<u8>,
        host: &[u8],
        stdout: OutputSink,
        stderr: OutputSink,
    ) -> Result<Guest, VmError> {
        let host = SavedHost::decode(host).map_err(VmError::HostState)?;
        let wasi = WasiCtx::restore(&host.wasi, stdout, stderr).map_err(VmError::Restore)?;
        self.finish_with(globals, stack, host, wasi)
    }

    fn finish_with(
        self,
        globals: &[SavedGlobal],
        stack: Vec<u8>,
        host: SavedHost,
        wasi: WasiCtx,
    ) -> Result<Guest, VmError> {
        let mut guest = self.guest;
        guest.load_globals(globals)?;
        guest.store.data_mut().wasi = wasi;
        guest.set_limits(host.limits)?;
        guest.guest_id = host.guest_id.clone();
        guest.generation = host.generation + 1;
        if guest.transform.name == tern_prepare::unwind::TRANSFORM_NAME {
            // Build the continuation now: a restore that cannot resume fails
            // here, and its cost counts as restore time (and downtime).
            guest.continuation = Some(guest.continuation(&stack)?);
        }
        guest.parked = Some((stack, host.pending));
        Ok(guest)
    }
}

/// Refuses a module whose memory starts larger than the memory limit, with
/// a clearer message than the failed instantiation would give.
fn check_initial_memory(module: &Module, limits: &Limits) -> Result<(), VmError> {
    let Some(max) = limits.max_memory else {
        return Ok(());
    };
    let initial = module.exports().find_map(|e| {
        e.ty()
            .memory()
            .map(|m| m.minimum().saturating_mul(m.page_size()))
    });
    match initial {
        Some(bytes) if bytes > max => Err(VmError::Limit(format!(
            "the module's initial memory of {} exceeds the memory limit of {}",
            crate::limits::size(bytes),
            crate::limits::size(max)
        ))),
        _ => Ok(()),
    }
}

/// One line for a trap: its cause, without wasm backtraces.
fn trap_message(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return trap.to_string();
    }
    e.to_string()
        .lines()
        .next()
        .unwrap_or("unknown trap")
        .to_string()
}

/// Times a closure, for reports.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, std::time::Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}
