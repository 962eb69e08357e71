//! What a node can do, as the controller weighs it: its CPU capacity (the
//! cores it may use, or the CPU quota of the cgroup it runs in) and the
//! speed of one of its cores.

use std::path::Path;
use std::time::{Duration, Instant};

/// The CPU capacity this process has, in cores: its cgroup's CPU quota when
/// one is set (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`), else the cores
/// it may run on.
pub fn detect_cpus() -> f64 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0);
    match cgroup_quota() {
        Some(q) if q > 0.0 => q.min(cores),
        _ => cores,
    }
}

/// The CPU quota of this process's cgroup, in cores, if one is set.
fn cgroup_quota() -> Option<f64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        // `hierarchy-id:controllers:path`; v2 is `0::path`.
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            let dir = Path::new("/sys/fs/cgroup").join(rel);
            if let Some(q) = read_v2(&dir) {
                return Some(q);
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            for mount in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"] {
                if let Some(q) = read_v1(&Path::new(mount).join(rel)) {
                    return Some(q);
                }
            }
        }
    }
    None
}

fn read_v2(dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
    let mut f = text.split_whitespace();
    let quota = f.next()?;
    let period: f64 = f.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    Some(quota.parse::<f64>().ok()? / period)
}

fn read_v1(dir: &Path) -> Option<f64> {
    let read = |name: &str| -> Option<f64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let quota = read("cpu.cfs_quota_us")?;
    let period = read("cpu.cfs_period_us")?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// Loop rounds one reference core runs in a second: the calibration loop
/// below, compiled by wasmtime, on one core of the x86_64 machines Tern is
/// developed on (release build; 2.3e8 was measured there with a parallel
/// build taking both cores, so the scale is rough: the policy uses only
/// the ratios between nodes; `docs/controller.md`).
const REFERENCE_RATE: f64 = 4.0e8;

/// The speed of one core of this node against the reference core (1.0),
/// as guests see it: a small WebAssembly loop compiled by wasmtime and run
/// for a few short bursts, the best kept (a busy neighbour makes one burst
/// look slow by chance, not all of them). Under qemu-user (an emulated
/// board) the compiled code is emulated too, as a guest's is, so the
/// figure shows what guests will get; a loop of native host code would
/// not (qemu translates simple integer code almost at full speed).
/// 0.0001 when the loop cannot be compiled.
pub fn calibrate() -> f64 {
    let Ok(spin) = Spin::new() else {
        return 0.0001;
    };
    let mut best = 0.0f64;
    for _ in 0..3 {
        best = best.max(spin.rate(Duration::from_millis(40)).unwrap_or(0.0));
    }
    (best / REFERENCE_RATE).max(0.0001)
}

/// The calibration loop, compiled: `spin(n)` runs n rounds of a xorshift
/// generator whose values address a 64 KiB linear memory, read and
/// written, feeding a multiply-add chain; it returns the chain.
struct Spin {
    store: std::cell::RefCell<wasmtime::Store<()>>,
    func: wasmtime::TypedFunc<i64, i64>,
}

impl Spin {
    fn new() -> Result<Spin, wasmtime::Error> {
        let mut config = wasmtime::Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = wasmtime::Engine::new(&config)?;
        let module = wasmtime::Module::new(&engine, spin_module())?;
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[])?;
        let func = instance.get_typed_func::<i64, i64>(&mut store, "spin")?;
        Ok(Spin {
            store: std::cell::RefCell::new(store),
            func,
        })
    }

    /// Loop rounds a second, over about `budget`.
    fn rate(&self, budget: Duration) -> Result<f64, wasmtime::Error> {
        let mut store = self.store.borrow_mut();
        let t0 = Instant::now();
        let mut rounds = 0u64;
        while t0.elapsed() < budget {
            std::hint::black_box(self.func.call(&mut *store, 100_000)?);
            rounds += 100_000;
        }
        Ok(rounds as f64 / t0.elapsed().as_secs_f64())
    }
}

/// The calibration module, encoded here (no text format at run time).
fn spin_module() -> Vec<u8> {
    use wasm_encoder::{
        BlockType, CodeSection, ExportKind, ExportSection, Function, FunctionSection,
        Instruction as I, MemorySection, MemoryType, Module, TypeSection, ValType,
    };
    let mut types = TypeSection::new();
    types.ty().function([ValType::I64], [ValType::I64]);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: Some(1),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("spin", ExportKind::Func, 0);
    // Locals: 0 = n (the parameter), 1 = x, 2 = acc.
    let mut f = Function::new([(2, ValType::I64)]);
    let (n, x, acc) = (0, 1, 2);
    f.instruction(&I::I64Const(0x1234_5678_9abc_def1));
    f.instruction(&I::LocalSet(x));
    f.instruction(&I::Loop(BlockType::Empty));
    for (shift, left) in [(13, true), (7, false), (17, true)] {
        f.instruction(&I::LocalGet(x));
        f.instruction(&I::LocalGet(x));
        f.instruction(&I::I64Const(shift));
        f.instruction(&if left { I::I64Shl } else { I::I64ShrU });
        f.instruction(&I::I64Xor);
        f.instruction(&I::LocalSet(x));
    }
    // Memory traffic, as guests have: mem[x & 0xfff8] += acc; acc = acc *
    // 31 + mem[(x >> 16) & 0xfff8].
    let addr = |f: &mut Function, shift: i64| {
        f.instruction(&I::LocalGet(x));
        if shift > 0 {
            f.instruction(&I::I64Const(shift));
            f.instruction(&I::I64ShrU);
        }
        f.instruction(&I::I32WrapI64);
        f.instruction(&I::I32Const(0xfff8));
        f.instruction(&I::I32And);
    };
    let mem = wasm_encoder::MemArg {
        offset: 0,
        align: 3,
        memory_index: 0,
    };
    addr(&mut f, 0);
    addr(&mut f, 0);
    f.instruction(&I::I64Load(mem));
    f.instruction(&I::LocalGet(acc));
    f.instruction(&I::I64Add);
    f.instruction(&I::I64Store(mem));
    f.instruction(&I::LocalGet(acc));
    f.instruction(&I::I64Const(31));
    f.instruction(&I::I64Mul);
    addr(&mut f, 16);
    f.instruction(&I::I64Load(mem));
    f.instruction(&I::I64Add);
    f.instruction(&I::LocalSet(acc));
    f.instruction(&I::LocalGet(n));
    f.instruction(&I::I64Const(1));
    f.instruction(&I::I64Sub);
    f.instruction(&I::LocalTee(n));
    f.instruction(&I::I64Const(0));
    f.instruction(&I::I64Ne);
    f.instruction(&I::BrIf(0));
    f.instruction(&I::End);
    f.instruction(&I::LocalGet(acc));
    f.instruction(&I::End);
    let mut code = CodeSection::new();
    code.function(&f);
    let mut m = Module::new();
    m.section(&types)
        .section(&funcs)
        .section(&memories)
        .section(&exports)
        .section(&code);
    m.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_and_speed_are_positive() {
        let c = detect_cpus();
        assert!(c > 0.0 && c <= 4096.0, "{c}");
        // The loop compiles and runs (0.0001 would mean it did not).
        assert!(calibrate() > 0.001);
    }

    #[test]
    fn cgroup_files_are_read_as_cores() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cpu.max"), "25000 100000\n").unwrap();
        assert_eq!(read_v2(d.path()), Some(0.25));
        std::fs::write(d.path().join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(read_v2(d.path()), None);
        std::fs::write(d.path().join("cpu.cfs_quota_us"), "50000\n").unwrap();
        std::fs::write(d.path().join("cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(read_v1(d.path()), Some(0.5));
        std::fs::write(d.path().join("cpu.cfs_quota_us"), "-1\n").unwrap();
        assert_eq!(read_v1(d.path()), None);
    }
}
