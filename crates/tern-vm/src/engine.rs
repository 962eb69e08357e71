//! The wasmtime engine Tern runs every guest on, and its compile cache.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::{Config, Engine, Linker, Module, OptLevel};

use crate::memory::TernMemoryCreator;
use crate::store::StoreData;
use crate::VmError;

/// Most native stack a guest's WebAssembly frames may use.
pub const MAX_WASM_STACK: usize = 4 << 20;
/// Stack size for threads that run guests (the main thread has 8 MiB).
pub const GUEST_THREAD_STACK: usize = 8 << 20;

/// One engine and linker per process, shared by every guest.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<StoreData>>,
    cache_dir: Option<PathBuf>,
}

impl Runtime {
    /// A runtime caching compiled modules under `cache_dir` (none: no cache).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, VmError> {
        let mut config = Config::new();
        config
            // Guests pause through the flag their migration points read
            // (crate::memory::PauseFlag), not wasmtime's epochs: an epoch
            // check at every loop header and call cost 1.07-1.42x on real
            // programs. That flag lies 64 KiB past 4 GiB, which the 4 GiB
            // reservation and its 32 MiB guard let compiled code reach
            // without a bounds check (wasmtime's defaults on 64-bit hosts,
            // made explicit here because Tern relies on them).
            .memory_reservation(1 << 32)
            .memory_guard_size(32 << 20)
            .memory_init_cow(false)
            .with_host_memory(Arc::new(TernMemoryCreator))
            .cranelift_opt_level(OptLevel::Speed)
            // Prepared code uses more stack per frame than the original
            // (the unwind transform adds locals), so allow deep recursion a bigger stack.
            // Threads running guests need at least GUEST_THREAD_STACK.
            .async_stack_size(MAX_WASM_STACK + (1 << 20))
            .max_wasm_stack(MAX_WASM_STACK)
            // Traps are reported in one line; backtraces only add noise.
            .wasm_backtrace_max_frames(None);
        // Experiment for issue 5: wasmtime's guest debugging keeps every
        // frame's locals and operand stack inspectable at host-call exits.
        if std::env::var_os("TERN_GUEST_DEBUG").is_some() {
            config.guest_debug(true);
        }
        let engine = Engine::new(&config).map_err(|e| VmError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        crate::wasi::add_to_linker(&mut linker).map_err(|e| VmError::Engine(e.to_string()))?;
        crate::guest::add_yield_to_linker(&mut linker)
            .map_err(|e| VmError::Engine(e.to_string()))?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache_dir,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn cache_path(&self, digest: &[u8; 32]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let name = format!("{}-{:016x}.cwasm", tern_prepare::hex(digest), h.finish());
        Some(dir.join("compiled").join(name))
    }

    /// Compiles a prepared module whose BLAKE3 digest is `digest`, reusing
    /// the compiled code cached from an earlier run when there is one.
    pub fn compile(&self, prepared: &[u8], digest: &[u8; 32]) -> Result<Module, VmError> {
        let path = self.cache_path(digest);
        if let Some(path) = &path {
            if let Some(module) = crate::precompiled::load(&self.engine, path) {
                return Ok(module);
            }
        }
        let module =
            Module::new(&self.engine, prepared).map_err(|e| VmError::Compile(e.to_string()))?;
        if let Some(path) = &path {
            // A cache that cannot be written only costs time next run.
            if let Ok(bytes) = module.serialize() {
                let _ = crate::precompiled::store(path, &bytes);
            }
        }
        Ok(module)
    }
}
