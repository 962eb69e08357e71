//! Tern's own unwind/rewind transform (`tern-unwind`).
//!
//! It gives a module the same five entry points as binaryen's Asyncify
//! (`asyncify_start_unwind`, `_stop_unwind`, `_start_rewind`,
//! `_stop_rewind`, `_get_state`) and the same buffer header (`{current,
//! end}` at the buffer address), so the monitor drives both alike. Its
//! frames are its own: an image records which transform made it.
//!
//! **What is rewritten.** A function is instrumented only if it can *unwind*:
//! it calls `tern.yield` or a blocking WASI import, directly or through
//! other functions, or through `call_indirect` of a type that some
//! address-taken function able to unwind has. Every other function is copied
//! byte for byte, so clang's many small helpers keep their size and speed.
//!
//! **Sites.** In an instrumented function, each reachable call that can
//! unwind is a *site*, numbered in order. After it: `i32.const id;
//! global.get $state; br_if $unwind; drop`: when the callee is unwinding,
//! control leaves through one block at the function's outside, which saves
//! the function's locals and the site number to the buffer and returns.
//!
//! **Operand stacks.** At each site, and before each `block`/`loop`/`if`
//! containing one (a *path item*), everything on the current frame's
//! operand stack goes to fresh locals and what the item takes is pushed
//! back; after it, the values below are pushed back under its results.
//! Harmless code (locals, constants, non-trapping integer arithmetic)
//! computing what the item takes is instead moved past the rewind entry
//! and run again when rewinding. So only locals are live across an unwind,
//! and no other code changes form.
//!
//! **Rewind.** The items of each sequence (the function body, a block or
//! loop body, an `if` arm) that contains path items are wrapped in nested
//! blocks `B_{n-1} .. B_0`, `B_i` ending just before item `i`. A dispatch
//! at the start of the sequence, run only when the state is rewinding
//! (at a sequence's start it is 0 or 2, never 1), breaks out of the `B_i`
//! whose item holds the saved site: one `br_if` for one item, else a
//! `br_table` over the site numbers (numbered in order, so each item holds
//! a contiguous range). The function body's dispatch first pops the frame
//! (locals, grouped by type and moved by shared helpers, and the site
//! number). An `if` whose sites are all in one arm takes that arm by
//! or-ing (or masking) its condition with the state; one with sites in
//! both keeps its condition in a saved local. A first item reached only
//! through harmless code needs no block (`Cons::free0`). The call at the
//! site is then made again, with its saved arguments, and the callee
//! rewinds in turn. Normal execution pays one global load and branch per
//! site and per entry to such a sequence, and the control-flow merges
//! before the items rewinding can reach (see `docs/transform.md`).
//!
//! Everything is one linear pass over each instrumented function (plus a
//! scan numbering its sites), and one over the module for the call graph.
//! `TERN_UNWIND_STATS=1` prints, per prepare, the bytes added by kind.

use std::collections::HashMap;
use std::convert::Infallible;

use wasm_encoder::reencode::{self, RoundtripReencoder};
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, Encode, ExportKind, ExportSection, FunctionSection,
    GlobalSection, GlobalType, Ieee32, Ieee64, Instruction, MemArg, Module, RawSection,
    TypeSection, ValType as EVal,
};
use wasmparser::{
    ElementItems, FuncType, FuncValidator, FuncValidatorAllocations, FunctionBody, Operator,
    OperatorsReader, Parser, Payload, TypeRef, ValType, ValidPayload, Validator,
    ValidatorResources,
};

use crate::{BLOCKING_WASI, WASI_MODULE, YIELD_IMPORT};

/// Name recorded in images for this transform.
pub const TRANSFORM_NAME: &str = "tern-unwind";
/// Version of the frame layout and dispatch. Bump it whenever the prepared
/// output or the saved frames could change for the same input.
pub const VERSION: u32 = 1;

/// The version string recorded for this transform: the migration-point
/// pass version and this transform's.
pub fn transform_version() -> String {
    format!("tern-{}-unwind{VERSION}", crate::asyncify::PASS_VERSION)
}

/// True when a module this transform prepared as `version` can be resumed
/// by this build.
pub fn resumable(version: &str) -> bool {
    version == transform_version()
}

/// Why the transform failed.
#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    /// The module uses something the transform cannot make pausable.
    #[error("uses {0}, which Tern's transform cannot make pausable")]
    Unsupported(String),
    /// The module could not be read (it was validated before, so this is a bug).
    #[error("reading the module failed: {0}")]
    Read(String),
}

impl From<wasmparser::BinaryReaderError> for UnwindError {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        UnwindError::Read(e.to_string())
    }
}

impl From<reencode::Error<Infallible>> for UnwindError {
    fn from(e: reencode::Error<Infallible>) -> Self {
        UnwindError::Read(e.to_string())
    }
}

/// Byte counts of what the rewrite adds, by kind (`TERN_UNWIND_STATS=1`).
pub(crate) mod stats {
    use std::sync::atomic::{AtomicU64, Ordering};
    pub static DISPATCH: AtomicU64 = AtomicU64::new(0);
    pub static SITE: AtomicU64 = AtomicU64::new(0);
    pub static CONSTRUCT: AtomicU64 = AtomicU64::new(0);
    pub static RESTORE: AtomicU64 = AtomicU64::new(0);
    pub static FRAME: AtomicU64 = AtomicU64::new(0);
    pub static SITES: AtomicU64 = AtomicU64::new(0);
    pub static ITEMS: AtomicU64 = AtomicU64::new(0);
    pub static FUNCS: AtomicU64 = AtomicU64::new(0);
    pub static LOCALS: AtomicU64 = AtomicU64::new(0);
    pub fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn print() {
        if std::env::var_os("TERN_UNWIND_STATS").is_none() {
            return;
        }
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        eprintln!(
            "unwind: funcs {} sites {} items {} saved-locals {} | bytes: dispatch {} site {} construct {} restore {} frame {}",
            g(&FUNCS), g(&SITES), g(&ITEMS), g(&LOCALS), g(&DISPATCH), g(&SITE), g(&CONSTRUCT), g(&RESTORE), g(&FRAME)
        );
    }
}

/// What the module-wide scan learns.
struct Scan {
    types: Vec<FuncType>,
    /// Type index -> canonical type (structurally equal types share one).
    canon: Vec<u32>,
    /// Type index of every function, imports first.
    func_types: Vec<u32>,
    imported: u32,
    globals: u32,
    /// Per function: can it unwind?
    can_unwind: Vec<bool>,
    /// Per canonical type: can a `call_indirect` of it unwind?
    unwind_type: Vec<bool>,
    /// Types used as the block type of a construct with parameters.
    param_blocks: Vec<u32>,
}

impl Scan {
    fn is_site(&self, op: &Operator) -> bool {
        match op {
            Operator::Call { function_index } => self.can_unwind[*function_index as usize],
            Operator::CallIndirect { type_index, .. } => {
                self.unwind_type[self.canon[*type_index as usize] as usize]
            }
            _ => false,
        }
    }

    /// Arguments (including a `call_indirect`'s table index) and results of
    /// a call.
    fn call_arity(&self, op: &Operator) -> (usize, usize) {
        let (ty, extra) = match op {
            Operator::Call { function_index } => (self.func_types[*function_index as usize], 0),
            Operator::CallIndirect { type_index, .. } => (*type_index, 1),
            _ => return (0, 0),
        };
        let ft = &self.types[ty as usize];
        (ft.params().len() + extra, ft.results().len())
    }

    /// Whether a site's arguments matter when it is called again to rewind:
    /// a module function ignores them (it reloads its locals); an import or
    /// a `call_indirect` (its table index) needs the same values.
    fn arguments_matter(&self, op: &Operator) -> bool {
        !matches!(op, Operator::Call { function_index } if *function_index >= self.imported)
    }

    fn block_arity(&self, bt: wasmparser::BlockType) -> (usize, usize) {
        match bt {
            wasmparser::BlockType::Empty => (0, 0),
            wasmparser::BlockType::Type(_) => (0, 1),
            wasmparser::BlockType::FuncType(t) => {
                let ft = &self.types[t as usize];
                (ft.params().len(), ft.results().len())
            }
        }
    }
}

fn is_source(module: &str, name: &str) -> bool {
    (module == YIELD_IMPORT.0 && name == YIELD_IMPORT.1)
        || (module == WASI_MODULE && BLOCKING_WASI.contains(&name))
}

/// Reads the module once: types, functions, address-taken functions and
/// the call graph; then finds what can unwind by a walk backwards from
/// the sources over callers, in time linear in the graph.
fn scan(wasm: &[u8]) -> Result<Scan, UnwindError> {
    let mut types = Vec::new();
    let mut func_types = Vec::new();
    let mut imported = 0u32;
    let mut globals = 0u32;
    let mut sources = Vec::new();
    let mut taken = Vec::new();
    // (callee, caller) and (type, caller)
    let mut calls: Vec<(u32, u32)> = Vec::new();
    let mut indirect: Vec<(u32, u32)> = Vec::new();
    let mut defined = 0u32;
    let mut param_blocks = Vec::new();
    let note = |op: &Operator, taken: &mut Vec<u32>| {
        if let Operator::RefFunc { function_index } = op {
            taken.push(*function_index);
        }
    };
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::TypeSection(r) => {
                for t in r.into_iter_err_on_gc_types() {
                    types.push(t?);
                }
            }
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp = imp?;
                    match imp.ty {
                        TypeRef::Func(t) => {
                            if is_source(imp.module, imp.name) {
                                sources.push(func_types.len() as u32);
                            }
                            func_types.push(t);
                            imported += 1;
                        }
                        TypeRef::Global(_) => globals += 1,
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    func_types.push(t?);
                }
            }
            Payload::GlobalSection(r) => {
                for g in r {
                    globals += 1;
                    for op in g?.init_expr.get_operators_reader() {
                        note(&op?, &mut taken);
                    }
                }
            }
            Payload::ElementSection(r) => {
                for e in r {
                    match e?.items {
                        ElementItems::Functions(fs) => {
                            for f in fs {
                                taken.push(f?);
                            }
                        }
                        ElementItems::Expressions(_, exprs) => {
                            for e in exprs {
                                for op in e?.get_operators_reader() {
                                    note(&op?, &mut taken);
                                }
                            }
                        }
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let caller = imported + defined;
                defined += 1;
                for op in body.get_operators_reader()? {
                    match op? {
                        Operator::Call { function_index } => calls.push((function_index, caller)),
                        Operator::CallIndirect { type_index, .. } => {
                            indirect.push((type_index, caller))
                        }
                        Operator::Block { blockty }
                        | Operator::Loop { blockty }
                        | Operator::If { blockty } => {
                            if let wasmparser::BlockType::FuncType(t) = blockty {
                                param_blocks.push(t);
                            }
                        }
                        ref other => note(other, &mut taken),
                    }
                }
            }
            _ => {}
        }
    }
    let mut ids: HashMap<&FuncType, u32> = HashMap::new();
    let canon: Vec<u32> = types
        .iter()
        .map(|t| {
            let next = ids.len() as u32;
            *ids.entry(t).or_insert(next)
        })
        .collect();
    let ncanon = ids.len();
    for pair in indirect.iter_mut() {
        pair.0 = canon[pair.0 as usize];
    }
    calls.sort_unstable();
    indirect.sort_unstable();
    let n = func_types.len();
    let mut is_taken = vec![false; n];
    for f in taken {
        if let Some(t) = is_taken.get_mut(f as usize) {
            *t = true;
        }
    }
    let mut can_unwind = vec![false; n];
    let mut unwind_type = vec![false; ncanon];
    let mut work = sources;
    for &s in &work {
        can_unwind[s as usize] = true;
    }
    let callers_of = |edges: &[(u32, u32)], key: u32| -> std::ops::Range<usize> {
        let start = edges.partition_point(|e| e.0 < key);
        let end = edges.partition_point(|e| e.0 <= key);
        start..end
    };
    while let Some(g) = work.pop() {
        for &(_, caller) in &calls[callers_of(&calls, g)] {
            if !can_unwind[caller as usize] {
                can_unwind[caller as usize] = true;
                work.push(caller);
            }
        }
        if is_taken[g as usize] {
            let c = canon[func_types[g as usize] as usize];
            if !unwind_type[c as usize] {
                unwind_type[c as usize] = true;
                for &(_, caller) in &indirect[callers_of(&indirect, c)] {
                    if !can_unwind[caller as usize] {
                        can_unwind[caller as usize] = true;
                        work.push(caller);
                    }
                }
            }
        }
    }
    param_blocks.sort_unstable();
    param_blocks.dedup();
    param_blocks.retain(|&t| !types[t as usize].params().is_empty());
    Ok(Scan {
        param_blocks,
        types,
        canon,
        func_types,
        imported,
        globals,
        can_unwind,
        unwind_type,
    })
}

/// Makes `wasm` (a module with migration points, see [`crate::points`])
/// unwindable from `tern.yield` and the blocking WASI calls.
pub fn run(wasm: &[u8]) -> Result<Vec<u8>, UnwindError> {
    let scan = scan(wasm)?;
    let ntypes = scan.types.len() as u32;
    // Block types for the body of functions with several results.
    let mut body_types: HashMap<Vec<ValType>, u32> = HashMap::new();
    let mut body_type_list: Vec<Vec<ValType>> = Vec::new();
    for t in &scan.types {
        if t.results().len() > 1 && !body_types.contains_key(t.results()) {
            body_types.insert(t.results().to_vec(), ntypes + body_type_list.len() as u32);
            body_type_list.push(t.results().to_vec());
        }
    }
    // The `B` blocks of a sequence with parameters take them: [params] -> [].
    let mut param_types: HashMap<u32, u32> = HashMap::new();
    let first_param_type = ntypes + body_type_list.len() as u32;
    for (i, &t) in scan.param_blocks.iter().enumerate() {
        param_types.insert(t, first_param_type + i as u32);
    }
    let nfuncs = scan.func_types.len() as u32;
    let state = scan.globals;
    let data = scan.globals + 1;
    let rt = runtime(
        state,
        data,
        first_param_type + scan.param_blocks.len() as u32,
        nfuncs,
    );
    let shared = Shared {
        wasm,
        scan: &scan,
        state,
        body_types: &body_types,
        param_types: &param_types,
        rt: &rt,
    };

    let mut module = Module::new();
    let mut validator = Validator::new_with_features(crate::check::features());
    let mut allocs = FuncValidatorAllocations::default();
    let mut code: Option<CodeSection> = None;
    let mut code_left = 0u32;
    let mut added = false;
    let mut defined = 0u32;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        let valid = validator
            .payload(&payload)
            .map_err(|e| UnwindError::Read(e.to_string()))?;
        match payload {
            Payload::Version { .. } | Payload::End(_) => {}
            Payload::TypeSection(r) => {
                let mut types = TypeSection::new();
                reencode::utils::parse_type_section(&mut RoundtripReencoder, &mut types, r)?;
                for results in &body_type_list {
                    let results: Vec<EVal> =
                        results.iter().map(|t| enc(*t)).collect::<Result<_, _>>()?;
                    types.ty().function([], results);
                }
                for &t in &scan.param_blocks {
                    let params: Vec<EVal> = scan.types[t as usize]
                        .params()
                        .iter()
                        .map(|t| enc(*t))
                        .collect::<Result<_, _>>()?;
                    types.ty().function(params, []);
                }
                for (params, results) in &rt.types {
                    types.ty().function(params.clone(), results.clone());
                }
                module.section(&types);
            }
            Payload::FunctionSection(r) => {
                let mut funcs = FunctionSection::new();
                for t in r {
                    funcs.function(t?);
                }
                for (t, _) in &rt.funcs {
                    funcs.function(*t);
                }
                module.section(&funcs);
            }
            Payload::GlobalSection(r) => {
                let mut globals = GlobalSection::new();
                reencode::utils::parse_global_section(&mut RoundtripReencoder, &mut globals, r)?;
                let ty = GlobalType {
                    val_type: EVal::I32,
                    mutable: true,
                    shared: false,
                };
                globals.global(ty, &ConstExpr::i32_const(0));
                globals.global(ty, &ConstExpr::i32_const(0));
                module.section(&globals);
            }
            Payload::ExportSection(r) => {
                let mut exports = ExportSection::new();
                reencode::utils::parse_export_section(&mut RoundtripReencoder, &mut exports, r)?;
                for (i, name) in [
                    "asyncify_start_unwind",
                    "asyncify_stop_unwind",
                    "asyncify_start_rewind",
                    "asyncify_stop_rewind",
                    "asyncify_get_state",
                ]
                .iter()
                .enumerate()
                {
                    exports.export(name, ExportKind::Func, nfuncs + i as u32);
                }
                module.section(&exports);
            }
            Payload::CodeSectionStart { count, .. } => {
                code = Some(CodeSection::new());
                code_left = count;
            }
            Payload::CodeSectionEntry(body) => {
                let func = scan.imported + defined;
                defined += 1;
                let section = code
                    .as_mut()
                    .ok_or_else(|| UnwindError::Read("code before its section".into()))?;
                if scan.can_unwind[func as usize] {
                    let ValidPayload::Func(to_validate, _) = valid else {
                        return Err(UnwindError::Read("function body not validated".into()));
                    };
                    let mut fv = to_validate.into_validator(std::mem::take(&mut allocs));
                    let bytes = instrument(&shared, func, &body, &mut fv)?;
                    allocs = fv.into_allocations();
                    section.raw(&bytes);
                } else {
                    section.raw(body.as_bytes());
                }
                code_left = code_left.saturating_sub(1);
                if code_left == 0 {
                    for (_, body) in &rt.funcs {
                        section.raw(body);
                    }
                    module.section(&*section);
                    added = true;
                }
            }
            other => {
                if let Some((id, range)) = other.as_section() {
                    module.section(&RawSection {
                        id,
                        data: &wasm[range],
                    });
                }
            }
        }
    }
    if !added {
        return Err(UnwindError::Read("the module has no code section".into()));
    }
    stats::print();
    Ok(module.finish())
}

fn enc(t: ValType) -> Result<EVal, UnwindError> {
    Ok(match t {
        ValType::I32 => EVal::I32,
        ValType::I64 => EVal::I64,
        ValType::F32 => EVal::F32,
        ValType::F64 => EVal::F64,
        ValType::V128 => EVal::V128,
        ValType::Ref(_) => {
            return Err(UnwindError::Unsupported(
                "a reference-typed value live in a function that can pause".into(),
            ))
        }
    })
}

fn size_of(t: ValType) -> u32 {
    match t {
        ValType::I32 | ValType::F32 => 4,
        ValType::I64 | ValType::F64 => 8,
        _ => 16,
    }
}

fn mem(offset: u32) -> MemArg {
    MemArg {
        offset: offset as u64,
        align: 0,
        memory_index: 0,
    }
}

fn put(out: &mut Vec<u8>, i: Instruction) {
    i.encode(out);
}

/// The value types a frame holds, in frame order.
const FRAME_TYPES: [ValType; 5] = [
    ValType::I32,
    ValType::I64,
    ValType::F32,
    ValType::F64,
    ValType::V128,
];
/// Locals moved by one save or load helper call, at most.
const CHUNK: usize = 8;

/// Functions the transform adds after the module's own: the five exported
/// control functions, the frame push and pop, and per value type and count
/// (2 to [`CHUNK`]) a helper that stores or loads that many values, so a
/// frame of many locals costs a few bytes per local in each function.
struct Runtime {
    /// New types, appended to the type section in this order.
    types: Vec<(Vec<EVal>, Vec<EVal>)>,
    /// New functions: (type index, body).
    funcs: Vec<(u32, Vec<u8>)>,
    /// Function indices.
    push: u32,
    pop: u32,
    first_helper: u32,
}

impl Runtime {
    /// The save (or, `load`, load) helper for `count` values of `t`.
    fn helper(&self, t: ValType, count: usize, load: bool) -> u32 {
        let ti = FRAME_TYPES.iter().position(|&f| f == t).unwrap_or(4);
        self.first_helper + ((ti * (CHUNK - 1) + count - 2) * 2 + usize::from(load)) as u32
    }
}

fn body(locals: &[(u32, EVal)], code: &[Instruction]) -> Vec<u8> {
    let mut b = Vec::new();
    (locals.len() as u32).encode(&mut b);
    for (n, t) in locals {
        n.encode(&mut b);
        t.encode(&mut b);
    }
    for i in code {
        i.encode(&mut b);
    }
    Instruction::End.encode(&mut b);
    b
}

fn runtime(state: u32, data: u32, first_type: u32, first_func: u32) -> Runtime {
    use Instruction as I;
    let mut types: Vec<(Vec<EVal>, Vec<EVal>)> = Vec::new();
    let mut ty = |params: Vec<EVal>, results: Vec<EVal>| {
        if let Some(i) = types.iter().position(|t| t.0 == params && t.1 == results) {
            return first_type + i as u32;
        }
        types.push((params, results));
        first_type + types.len() as u32 - 1
    };
    let (i32_void, void_void, void_i32) = (
        ty(vec![EVal::I32], vec![]),
        ty(vec![], vec![]),
        ty(vec![], vec![EVal::I32]),
    );
    // Traps when the buffer's current pointer passed its end.
    let check = [
        I::GlobalGet(data),
        I::I32Load(mem(0)),
        I::GlobalGet(data),
        I::I32Load(mem(4)),
        I::I32GtU,
        I::If(BlockType::Empty),
        I::Unreachable,
        I::End,
    ];
    let set = |v: i32| [I::I32Const(v), I::GlobalSet(state)];
    let start = |v: i32| {
        let mut c = set(v).to_vec();
        c.extend([I::LocalGet(0), I::GlobalSet(data)]);
        c.extend(check.iter().cloned());
        body(&[], &c)
    };
    let stop = || {
        let mut c = set(0).to_vec();
        c.extend(check.iter().cloned());
        body(&[], &c)
    };
    let mut funcs = vec![
        (i32_void, start(1)),
        (void_void, stop()),
        (i32_void, start(2)),
        (void_void, stop()),
        (void_i32, body(&[], &[I::GlobalGet(state)])),
    ];
    // push(site, size) -> ptr: takes a frame of `size` bytes, site first.
    let push_ty = ty(vec![EVal::I32, EVal::I32], vec![EVal::I32]);
    funcs.push((
        push_ty,
        body(
            &[(1, EVal::I32)],
            &[
                I::GlobalGet(data),
                I::I32Load(mem(0)),
                I::LocalSet(2),
                I::LocalGet(2),
                I::LocalGet(1),
                I::I32Add,
                I::GlobalGet(data),
                I::I32Load(mem(4)),
                I::I32GtU,
                I::If(BlockType::Empty),
                I::Unreachable,
                I::End,
                I::LocalGet(2),
                I::LocalGet(0),
                I::I32Store(mem(0)),
                I::GlobalGet(data),
                I::LocalGet(2),
                I::LocalGet(1),
                I::I32Add,
                I::I32Store(mem(0)),
                I::LocalGet(2),
            ],
        ),
    ));
    // pop(size) -> (ptr, site): gives back the last frame pushed.
    let pop_ty = ty(vec![EVal::I32], vec![EVal::I32, EVal::I32]);
    funcs.push((
        pop_ty,
        body(
            &[(1, EVal::I32)],
            &[
                I::GlobalGet(data),
                I::I32Load(mem(0)),
                I::LocalGet(0),
                I::I32Sub,
                I::LocalSet(1),
                I::GlobalGet(data),
                I::LocalGet(1),
                I::I32Store(mem(0)),
                I::LocalGet(1),
                I::LocalGet(1),
                I::I32Load(mem(0)),
            ],
        ),
    ));
    let first_helper = first_func + funcs.len() as u32;
    for t in FRAME_TYPES {
        let e = enc(t).expect("a number or vector type");
        let size = size_of(t);
        for count in 2..=CHUNK {
            let mut params = vec![EVal::I32];
            params.extend(std::iter::repeat_n(e, count));
            let mut save = Vec::new();
            for j in 0..count {
                save.extend([I::LocalGet(0), I::LocalGet(1 + j as u32)]);
                save.push(store(t, j as u32 * size));
            }
            funcs.push((ty(params, vec![]), body(&[], &save)));
            let mut load = Vec::new();
            for j in 0..count {
                load.extend([I::LocalGet(0), self::load(t, j as u32 * size)]);
            }
            let results = vec![e; count];
            funcs.push((ty(vec![EVal::I32], results), body(&[], &load)));
        }
    }
    Runtime {
        types,
        funcs,
        push: first_func + 5,
        pop: first_func + 6,
        first_helper,
    }
}

/// What the per-function rewrite needs from the module.
struct Shared<'a> {
    wasm: &'a [u8],
    scan: &'a Scan,
    state: u32,
    body_types: &'a HashMap<Vec<ValType>, u32>,
    param_types: &'a HashMap<u32, u32>,
    rt: &'a Runtime,
}

/// A path item of a sequence: a site, or a construct containing the sites
/// `[lo, hi)`.
#[derive(Debug, Clone, Copy)]
struct Item {
    lo: u32,
    hi: u32,
}

/// A construct (or the function body, construct 0), in order of appearance.
#[derive(Debug, Default)]
struct Cons {
    lo: u32,
    mid: u32,
    hi: u32,
    arms: [Vec<Item>; 2],
    /// Per arm: its first item is *free*: only harmless code precedes it
    /// in the arm, making exactly what it takes. Rewinding then simply runs
    /// that code again, so the item needs no block to be reached and the
    /// hot path no extra merge point (a loop's pause check is such).
    free0: [bool; 2],
}

/// First pass over a function: numbers the sites and lists, per sequence,
/// its path items. A site counts only where the code is reachable
/// (syntactically, as validation defines it): code after `br`, `br_table`,
/// `return` or `unreachable` up to the end of its construct never runs.
fn plan(scan: &Scan, ops: OperatorsReader) -> Result<Vec<Cons>, UnwindError> {
    struct Open {
        ord: usize,
        arm: usize,
        live: bool,
        dead: bool,
        is_if: bool,
        params: usize,
        /// While the current arm has run only harmless operators: the
        /// values they left and whether all were exact.
        prefix: Option<(usize, bool)>,
        /// Its parent's prefix made exactly what this construct takes.
        takes_prefix: bool,
    }
    let mut cons = vec![Cons {
        mid: u32::MAX,
        ..Cons::default()
    }];
    let mut stack = vec![Open {
        ord: 0,
        arm: 0,
        live: true,
        dead: false,
        is_if: false,
        params: 0,
        prefix: Some((0, true)),
        takes_prefix: false,
    }];
    let mut next = 0u32;
    for op in ops {
        let op = op?;
        let Some(top) = stack.last_mut() else {
            return Err(UnwindError::Read("code after the function's end".into()));
        };
        match op {
            Operator::Block { blockty } | Operator::Loop { blockty } | Operator::If { blockty } => {
                let dead = top.dead || !top.live;
                let is_if = matches!(op, Operator::If { .. });
                let (params, _) = scan.block_arity(blockty);
                let takes = params + usize::from(is_if);
                let takes_prefix = matches!(top.prefix, Some((h, _)) if h == takes);
                top.prefix = None;
                cons.push(Cons {
                    lo: next,
                    mid: u32::MAX,
                    ..Cons::default()
                });
                stack.push(Open {
                    ord: cons.len() - 1,
                    arm: 0,
                    live: true,
                    dead,
                    is_if,
                    params,
                    prefix: (params == 0).then_some((0, true)),
                    takes_prefix,
                });
            }
            Operator::Else => {
                top.arm = 1;
                top.live = true;
                top.prefix = (top.params == 0).then_some((0, true));
                cons[top.ord].mid = next;
            }
            Operator::End => {
                let open = stack.pop().expect("checked above");
                let c = &mut cons[open.ord];
                c.hi = next;
                if c.mid == u32::MAX {
                    c.mid = next;
                }
                let item = Item { lo: c.lo, hi: c.hi };
                // An `if` with sites in both arms needs its real condition.
                let both = open.is_if && c.mid != c.lo && c.mid != c.hi;
                if let Some(parent) = stack.last() {
                    if !open.dead && item.hi > item.lo {
                        let p = &mut cons[parent.ord];
                        if p.arms[parent.arm].is_empty() && open.takes_prefix && !both {
                            p.free0[parent.arm] = true;
                        }
                        p.arms[parent.arm].push(item);
                    }
                }
            }
            ref call if scan.is_site(call) && !top.dead && top.live => {
                let (nargs, _) = scan.call_arity(call);
                // Re-made when rewinding: exactly, for calls whose
                // arguments matter then.
                let exact_needed = scan.arguments_matter(call);
                let free = matches!(top.prefix, Some((h, exact))
                    if h == nargs && (exact || !exact_needed));
                top.prefix = None;
                next += 1;
                let arm = &mut cons[top.ord].arms[top.arm];
                if arm.is_empty() && free {
                    cons[top.ord].free0[top.arm] = true;
                }
                cons[top.ord].arms[top.arm].push(Item {
                    lo: next - 1,
                    hi: next,
                });
            }
            ref other => {
                if matches!(
                    other,
                    Operator::Br { .. }
                        | Operator::BrTable { .. }
                        | Operator::Return
                        | Operator::Unreachable
                ) {
                    top.live = false;
                }
                top.prefix = match (top.prefix, harmless(other)) {
                    (Some((h, ex)), Some((pops, exact))) if h >= pops => {
                        Some((h - pops + 1, ex && exact))
                    }
                    _ => None,
                };
            }
        }
    }
    Ok(cons)
}

/// Operators without side effects that cannot trap: `(values popped,
/// exact)`, exact when the result depends only on locals and constants.
/// The code computing what a site or construct takes may be moved past
/// the rewind entry when it is made of these: run again when rewinding, it
/// gives the same values (exact) or harmless ones.
fn harmless(op: &Operator) -> Option<(usize, bool)> {
    use Operator as O;
    Some(match op {
        O::LocalGet { .. } | O::I32Const { .. } | O::I64Const { .. } => (0, true),
        O::F32Const { .. } | O::F64Const { .. } => (0, true),
        O::GlobalGet { .. } => (0, false),
        O::I32Eqz | O::I64Eqz | O::I32WrapI64 | O::I64ExtendI32S | O::I64ExtendI32U => (1, true),
        O::I32Add
        | O::I32Sub
        | O::I32Mul
        | O::I32And
        | O::I32Or
        | O::I32Xor
        | O::I32Shl
        | O::I32ShrS
        | O::I32ShrU
        | O::I32Eq
        | O::I32Ne
        | O::I32LtS
        | O::I32LtU
        | O::I32GtS
        | O::I32GtU
        | O::I32LeS
        | O::I32LeU
        | O::I32GeS
        | O::I32GeU
        | O::I64Add
        | O::I64Sub
        | O::I64Mul
        | O::I64And
        | O::I64Or
        | O::I64Xor
        | O::I64Shl
        | O::I64ShrS
        | O::I64ShrU => (2, true),
        _ => return None,
    })
}

/// An open frame of the original code while rewriting.
struct Frame {
    /// Label level of this frame in the output (see [`Rewriter::level`]).
    level: u32,
    ord: usize,
    arm: usize,
    /// Path items of the current arm passed so far, and their number.
    cursor: usize,
    n: usize,
    /// The construct's block type.
    bt: wasmparser::BlockType,
    live: bool,
    dead: bool,
    /// A construct holding sites (or the function body).
    path: bool,
    /// Values below this construct, kept in locals until its end.
    restore: Vec<(ValType, u32)>,
    /// Locals held until its end (an `if`'s condition).
    hold: Vec<(ValType, u32)>,
    results: usize,
}

/// Second pass over a function: writes the instrumented code.
struct Rewriter<'a> {
    sh: &'a Shared<'a>,
    cons: &'a [Cons],
    out: Vec<u8>,
    /// Labels open in the output at this point (the function's own is 0).
    level: u32,
    frames: Vec<Frame>,
    next_ord: usize,
    next_site: u32,
    target: u32,
    next_local: u32,
    temps: Vec<ValType>,
    free: HashMap<ValType, Vec<u32>>,
    /// Within the current run of [`harmless`] operators: before each,
    /// its output position and the operand stack height; entries from
    /// which a later operator popped below their height are dropped.
    run: Vec<(usize, usize)>,
    /// Output positions before this are not exact (a `global.get` follows).
    inexact_until: usize,
    /// Where the frame pop goes: first thing in the function body's
    /// dispatch, run only when rewinding (none: the function has no site
    /// and is never rewound into).
    restore_at: Option<usize>,
}

/// Checkpoints kept per run of harmless operators.
const RUN_MAX: usize = 32;

impl Rewriter<'_> {
    fn put(&mut self, i: Instruction) {
        i.encode(&mut self.out);
    }

    fn top(&mut self) -> &mut Frame {
        self.frames.last_mut().expect("inside the function")
    }

    fn alloc(&mut self, t: ValType) -> Result<u32, UnwindError> {
        enc(t)?;
        if let Some(l) = self.free.get_mut(&t).and_then(|v| v.pop()) {
            return Ok(l);
        }
        let l = self.next_local;
        self.next_local += 1;
        self.temps.push(t);
        Ok(l)
    }

    fn release(&mut self, temps: &[(ValType, u32)]) {
        for &(t, l) in temps {
            self.free.entry(t).or_default().push(l);
        }
    }

    /// Values on the current frame's operand stack (original code).
    fn frame_values(fv: &FuncValidator<ValidatorResources>) -> Result<usize, UnwindError> {
        let frame = fv
            .get_control_frame(0)
            .ok_or_else(|| UnwindError::Read("no control frame".into()))?;
        Ok(fv.operand_stack_height() as usize - frame.height)
    }

    /// Moves `count` values, from `depth` down the operand stack, to fresh
    /// locals; returns them bottom first.
    fn spill(
        &mut self,
        fv: &FuncValidator<ValidatorResources>,
        depth: usize,
        count: usize,
    ) -> Result<Vec<(ValType, u32)>, UnwindError> {
        let mut v = Vec::with_capacity(count);
        for d in depth..depth + count {
            let t = fv
                .get_operand_type(d)
                .flatten()
                .ok_or_else(|| UnwindError::Read("unknown operand type at a site".into()))?;
            let l = self.alloc(t)?;
            self.put(Instruction::LocalSet(l));
            v.push((t, l));
        }
        v.reverse();
        Ok(v)
    }

    fn push(&mut self, vals: &[(ValType, u32)]) {
        for &(_, l) in vals {
            self.put(Instruction::LocalGet(l));
        }
    }

    /// Copies a harmless operator, extending the current run.
    fn harmless_op(&mut self, raw: &[u8], height: usize, pops: usize, exact: bool) {
        if self.run.len() == RUN_MAX {
            self.run.remove(0);
        }
        self.run.push((self.out.len(), height));
        let floor = height.saturating_sub(pops);
        self.run.retain(|&(_, h)| h <= floor);
        self.out.extend_from_slice(raw);
        if !exact {
            self.inexact_until = self.out.len();
        }
    }

    /// Cuts off the end of the output that computes exactly the top `takes`
    /// values from harmless operators (exact ones only, if `exact`), and
    /// returns it; `None` when the values come from anything else.
    fn take_run(&mut self, height: usize, takes: usize, exact: bool) -> Option<Vec<u8>> {
        let run = std::mem::take(&mut self.run);
        if takes == 0 {
            return Some(Vec::new());
        }
        let want = height.checked_sub(takes)?;
        let &(pos, _) = run
            .iter()
            .rev()
            .find(|&&(p, h)| h == want && (!exact || p >= self.inexact_until))?;
        Some(self.out.split_off(pos))
    }

    /// Whether the next path item of the current arm is free (see
    /// [`Cons::free0`]).
    fn next_is_free(&self) -> bool {
        let f = self.frames.last().expect("inside the function");
        f.cursor == 0 && self.cons[f.ord].free0[f.arm]
    }

    /// Closes the innermost open `B` block (a free item has none): the
    /// next path item follows.
    fn next_item(&mut self) -> Result<Item, UnwindError> {
        if !self.next_is_free() {
            self.put(Instruction::End);
            self.level -= 1;
        }
        let cons = self.cons;
        let f = self.top();
        let item = cons[f.ord].arms[f.arm]
            .get(f.cursor)
            .copied()
            .ok_or_else(|| UnwindError::Read("site plan out of step".into()))?;
        f.cursor += 1;
        Ok(item)
    }

    /// Start of a sequence in a path frame: the `B` blocks and the dispatch.
    fn arm_start(&mut self, fv: &FuncValidator<ValidatorResources>) -> Result<(), UnwindError> {
        let cons = self.cons;
        let f = self.top();
        f.cursor = 0;
        f.n = cons[f.ord].arms[f.arm].len();
        let (ord, arm, frame_bt, n) = (f.ord, f.arm, f.bt, f.n);
        let items = &cons[ord].arms[arm];
        let free0 = cons[ord].free0[arm];
        // The function body's dispatch also pops the frame (see
        // `restore_at`), so that entry has one merge, not two.
        let body = ord == 0;
        if n == 0 {
            return Ok(());
        }
        if n == 1 && free0 {
            if body {
                self.put(Instruction::GlobalGet(self.sh.state));
                self.put(Instruction::If(BlockType::Empty));
                self.restore_at = Some(self.out.len());
                self.put(Instruction::End);
            }
            return Ok(());
        }
        // Depths below are for B_i inside the dispatch's `if`; without B_0
        // (a free first item), exiting the `if` itself reaches item 0.
        let shift = u32::from(!free0);
        let at = self.out.len();
        stats::add(&stats::ITEMS, n);
        // The blocks take the sequence's parameters, so that nothing is
        // written to a local on the way to a site when rewinding (that
        // could clobber a restored one).
        let bt =
            match (Self::frame_values(fv)?, frame_bt) {
                (0, _) => BlockType::Empty,
                (_, wasmparser::BlockType::FuncType(t)) => {
                    BlockType::FunctionType(*self.sh.param_types.get(&t).ok_or_else(|| {
                        UnwindError::Read("parameter block type not planned".into())
                    })?)
                }
                _ => return Err(UnwindError::Read("parameters without a type".into())),
            };
        let blocks = n - usize::from(free0);
        for _ in 0..blocks {
            self.put(Instruction::Block(bt));
        }
        self.level += blocks as u32;
        // Rewinding (state 2; at a sequence's start it is 0 or 2): leave
        // B_i, whose item holds the saved site. B_i is at depth i here.
        let state = self.sh.state;
        if n == 1 && body {
            self.put(Instruction::GlobalGet(state));
            self.put(Instruction::If(BlockType::Empty));
            self.restore_at = Some(self.out.len());
            self.put(Instruction::Br(1));
            self.put(Instruction::End);
        } else if n == 1 {
            self.put(Instruction::GlobalGet(state));
            self.put(Instruction::BrIf(0));
        } else {
            let lo = items[0].lo;
            let span = (items[n - 1].hi - lo) as usize;
            self.put(Instruction::GlobalGet(state));
            self.put(Instruction::If(BlockType::Empty));
            if body {
                self.restore_at = Some(self.out.len());
            }
            if span <= 6 * n {
                // A jump table over the site numbers, out of range: trap.
                self.put(Instruction::Block(BlockType::Empty));
                self.put(Instruction::LocalGet(self.target));
                if lo != 0 {
                    self.put(Instruction::I32Const(lo as i32));
                    self.put(Instruction::I32Sub);
                }
                let mut table = Vec::with_capacity(span);
                for (i, item) in items.iter().enumerate() {
                    table.extend(std::iter::repeat_n(
                        1 + shift + i as u32,
                        (item.hi - item.lo) as usize,
                    ));
                }
                self.put(Instruction::BrTable(table.into(), 0));
                self.put(Instruction::End);
                self.put(Instruction::Unreachable);
            } else {
                // Few items over many sites: compare with each item's end.
                for (i, item) in items.iter().enumerate().take(n - 1) {
                    self.put(Instruction::LocalGet(self.target));
                    self.put(Instruction::I32Const(item.hi as i32));
                    self.put(Instruction::I32LtU);
                    self.put(Instruction::BrIf(shift + i as u32));
                }
                self.put(Instruction::Br(shift + n as u32 - 1));
            }
            self.put(Instruction::End);
        }
        stats::add(&stats::DISPATCH, self.out.len() - at);
        Ok(())
    }

    /// Turns the condition on the stack of an `if` whose sites are all in
    /// one arm into one that takes that arm when rewinding: or-ed with the
    /// state (then arm), or zero while rewinding (else arm).
    fn arm_with_sites(&mut self, then_arm: bool) {
        let state = self.sh.state;
        if then_arm {
            self.put(Instruction::GlobalGet(state));
            self.put(Instruction::I32Or);
        } else {
            self.put(Instruction::I32Const(0));
            self.put(Instruction::GlobalGet(state));
            self.put(Instruction::I32Eqz);
            self.put(Instruction::Select);
        }
    }

    fn branch_depth(&self, relative: u32) -> Result<u32, UnwindError> {
        let i = self
            .frames
            .len()
            .checked_sub(1 + relative as usize)
            .ok_or_else(|| UnwindError::Read("branch depth out of range".into()))?;
        Ok(self.level - self.frames[i].level)
    }

    fn construct(
        &mut self,
        fv: &mut FuncValidator<ValidatorResources>,
        op: &Operator,
        raw: &[u8],
        offset: usize,
        bt: wasmparser::BlockType,
    ) -> Result<(), UnwindError> {
        let ord = self.next_ord;
        self.next_ord += 1;
        let parent = self.frames.last().expect("inside the function");
        let dead = parent.dead || !parent.live;
        let c = &self.cons[ord];
        let path = !dead && c.hi > c.lo;
        let (then_only, else_only) = (c.mid == c.hi, c.mid == c.lo);
        let (np, nr) = self.sh.scan.block_arity(bt);
        let is_if = matches!(op, Operator::If { .. });
        let mut restore = Vec::new();
        let mut hold = Vec::new();
        let at = self.out.len();
        if path {
            let k = Self::frame_values(fv)?;
            let height = fv.operand_stack_height() as usize;
            let takes = np + usize::from(is_if);
            if self.next_is_free() {
                // Made by harmless code, which rewinding runs again.
                self.run.clear();
                self.next_item()?;
                if is_if {
                    self.arm_with_sites(then_only);
                }
            } else if is_if && !then_only && !else_only {
                // Sites in both arms: the condition itself picks the arm
                // when rewinding, so it is kept (saved with the frame).
                self.run.clear();
                let cond = self.alloc(ValType::I32)?;
                self.put(Instruction::LocalSet(cond));
                hold.push((ValType::I32, cond));
                let params = self.spill(fv, 1, np)?;
                restore = self.spill(fv, takes, k - takes)?;
                self.next_item()?;
                self.push(&params);
                self.release(&params);
                self.put(Instruction::LocalGet(cond));
            } else {
                // What it takes is re-made when rewinding (any values do:
                // they go into the B blocks, or select the only arm that
                // has sites, below).
                match self.take_run(height, takes, false) {
                    Some(moved) => {
                        restore = self.spill(fv, takes, k - takes)?;
                        self.next_item()?;
                        self.out.extend_from_slice(&moved);
                    }
                    None => {
                        let taken = self.spill(fv, 0, takes)?;
                        restore = self.spill(fv, takes, k - takes)?;
                        self.next_item()?;
                        self.push(&taken);
                        self.release(&taken);
                    }
                }
                if is_if {
                    self.arm_with_sites(then_only);
                }
            }
        }
        self.run.clear();
        stats::add(&stats::CONSTRUCT, self.out.len() - at);
        self.out.extend_from_slice(raw);
        self.level += 1;
        fv.op(offset, op)?;
        self.frames.push(Frame {
            level: self.level,
            ord,
            arm: 0,
            cursor: 0,
            n: 0,
            bt,
            live: true,
            dead,
            path,
            restore,
            hold,
            results: nr,
        });
        if path {
            self.arm_start(fv)?;
        }
        Ok(())
    }

    fn site(
        &mut self,
        fv: &mut FuncValidator<ValidatorResources>,
        op: &Operator,
        raw: &[u8],
        offset: usize,
    ) -> Result<(), UnwindError> {
        let (nargs, nres) = self.sh.scan.call_arity(op);
        let at = self.out.len() + raw.len();
        stats::add(&stats::SITES, 1);
        let k = Self::frame_values(fv)?;
        let height = fv.operand_stack_height() as usize;
        let exact = self.sh.scan.arguments_matter(op);
        let free = self.next_is_free();
        let moved = if free {
            self.run.clear();
            None
        } else {
            self.take_run(height, nargs, exact)
        };
        let below = match moved {
            None if free => {
                // Made by harmless code, which rewinding runs again.
                self.next_item()?;
                Vec::new()
            }
            Some(moved) => {
                let below = self.spill(fv, nargs, k - nargs)?;
                self.next_item()?;
                self.out.extend_from_slice(&moved);
                below
            }
            None => {
                let args = self.spill(fv, 0, nargs)?;
                let below = self.spill(fv, nargs, k - nargs)?;
                self.next_item()?;
                self.push(&args);
                self.release(&args);
                below
            }
        };
        self.out.extend_from_slice(raw);
        let id = self.next_site;
        self.next_site += 1;
        self.put(Instruction::I32Const(id as i32));
        self.put(Instruction::GlobalGet(self.sh.state));
        self.put(Instruction::BrIf(self.level - 1));
        self.put(Instruction::Drop);
        fv.op(offset, op)?;
        if !below.is_empty() {
            let res = self.spill(fv, 0, nres)?;
            self.push(&below);
            self.push(&res);
            self.release(&res);
        }
        self.release(&below);
        stats::add(&stats::SITE, self.out.len() - at);
        Ok(())
    }
}

/// Frame code for the locals `saved` (local, type), grouped by type in
/// [`FRAME_TYPES`] order from offset 4 (the site number is at 0): saves
/// (`load` false) or loads them at the frame address in local `ptr`.
/// Returns the frame size.
fn frame_code(
    out: &mut Vec<u8>,
    rt: &Runtime,
    saved: &[(u32, ValType)],
    ptr: u32,
    load: bool,
) -> u32 {
    use Instruction as I;
    let mut off = 4u32;
    for t in FRAME_TYPES {
        let locals: Vec<u32> = saved
            .iter()
            .filter(|(_, lt)| *lt == t)
            .map(|(l, _)| *l)
            .collect();
        for chunk in locals.chunks(CHUNK) {
            let base = |out: &mut Vec<u8>| {
                put(out, I::LocalGet(ptr));
                if off != 0 {
                    put(out, I::I32Const(off as i32));
                    put(out, I::I32Add);
                }
            };
            match (chunk.len(), load) {
                (1, false) => {
                    put(out, I::LocalGet(ptr));
                    put(out, I::LocalGet(chunk[0]));
                    put(out, store(t, off));
                }
                (1, true) => {
                    put(out, I::LocalGet(ptr));
                    put(out, self::load(t, off));
                    put(out, I::LocalSet(chunk[0]));
                }
                (c, false) => {
                    base(out);
                    for &l in chunk {
                        put(out, I::LocalGet(l));
                    }
                    put(out, I::Call(rt.helper(t, c, false)));
                }
                (c, true) => {
                    base(out);
                    put(out, I::Call(rt.helper(t, c, true)));
                    for &l in chunk.iter().rev() {
                        put(out, I::LocalSet(l));
                    }
                }
            }
            off += size_of(t) * chunk.len() as u32;
        }
    }
    off
}

/// Rewrites one function that can unwind. Returns the body (locals and
/// code) without its size prefix.
fn instrument(
    sh: &Shared,
    func: u32,
    body: &FunctionBody,
    fv: &mut FuncValidator<ValidatorResources>,
) -> Result<Vec<u8>, UnwindError> {
    let scan = sh.scan;
    let ty = &scan.types[scan.func_types[func as usize] as usize];
    let mut local_types: Vec<ValType> = ty.params().to_vec();
    let mut groups: Vec<(u32, ValType)> = Vec::new();
    let mut locals = body.get_locals_reader()?;
    for _ in 0..locals.get_count() {
        let offset = locals.original_position();
        let (count, t) = locals.read()?;
        fv.define_locals(offset, count, t)?;
        groups.push((count, t));
        local_types.extend(std::iter::repeat_n(t, count as usize));
    }
    for &t in &local_types {
        enc(t)?;
    }
    let cons = plan(scan, body.get_operators_reader()?)?;
    let base = local_types.len() as u32;
    let (target, ptr) = (base, base + 1);
    let mut rw = Rewriter {
        sh,
        cons: &cons,
        out: Vec::with_capacity(body.as_bytes().len() * 2),
        level: 0,
        frames: Vec::new(),
        next_ord: 1,
        next_site: 0,
        target,
        next_local: base + 2,
        temps: Vec::new(),
        free: HashMap::new(),
        run: Vec::new(),
        inexact_until: 0,
        restore_at: None,
    };
    let results = ty.results();
    let body_bt = match results.len() {
        0 => BlockType::Empty,
        1 => BlockType::Result(enc(results[0])?),
        _ => BlockType::FunctionType(sh.body_types[results]),
    };
    rw.put(Instruction::Block(BlockType::Result(EVal::I32)));
    rw.put(Instruction::Block(body_bt));
    rw.level = 2;
    rw.frames.push(Frame {
        level: 2,
        ord: 0,
        arm: 0,
        cursor: 0,
        n: 0,
        bt: wasmparser::BlockType::Empty,
        live: true,
        dead: false,
        path: true,
        restore: Vec::new(),
        hold: Vec::new(),
        results: results.len(),
    });
    rw.arm_start(fv)?;

    let mut ops = OperatorsReader::new(locals.get_binary_reader());
    let mut finished = false;
    while !ops.eof() {
        let start = ops.original_position();
        let op = ops.read()?;
        let raw = &sh.wasm[start..ops.original_position()];
        match op {
            Operator::Block { blockty } | Operator::Loop { blockty } | Operator::If { blockty } => {
                rw.construct(fv, &op, raw, start, blockty)?;
            }
            ref call
                if scan.is_site(call) && {
                    let f = rw.frames.last().expect("inside the function");
                    !f.dead && f.live
                } =>
            {
                rw.site(fv, call, raw, start)?;
                rw.run.clear();
            }
            _ => {
                let harmless = harmless(&op).filter(|_| {
                    let f = rw.frames.last().expect("inside the function");
                    f.live && !f.dead
                });
                if let Some((pops, exact)) = harmless {
                    let height = fv.operand_stack_height() as usize;
                    rw.harmless_op(raw, height, pops, exact);
                    fv.op(start, &op)?;
                    continue;
                }
                rw.run.clear();
                match op {
                    Operator::Else => {
                        let f = rw.top();
                        if f.path && f.cursor != f.n {
                            return Err(UnwindError::Read("site plan out of step at else".into()));
                        }
                        rw.out.extend_from_slice(raw);
                        fv.op(start, &op)?;
                        let f = rw.top();
                        f.arm = 1;
                        f.live = true;
                        if f.path {
                            rw.arm_start(fv)?;
                        }
                    }
                    Operator::End => {
                        let f = rw.frames.pop().expect("inside the function");
                        if rw.frames.is_empty() {
                            // The function's end: close $body, return; close $unwind.
                            rw.put(Instruction::End);
                            rw.put(Instruction::Return);
                            rw.put(Instruction::End);
                            rw.level = 0;
                            fv.op(start, &op)?;
                            finished = true;
                            break;
                        }
                        rw.out.extend_from_slice(raw);
                        rw.level -= 1;
                        fv.op(start, &op)?;
                        if !f.restore.is_empty() {
                            let at = rw.out.len();
                            let res = rw.spill(fv, 0, f.results)?;
                            rw.push(&f.restore);
                            rw.push(&res);
                            rw.release(&res);
                            stats::add(&stats::RESTORE, rw.out.len() - at);
                        }
                        rw.release(&f.restore);
                        rw.release(&f.hold);
                    }
                    Operator::Br { relative_depth } => {
                        let d = rw.branch_depth(relative_depth)?;
                        rw.put(Instruction::Br(d));
                        fv.op(start, &op)?;
                        rw.top().live = false;
                    }
                    Operator::BrIf { relative_depth } => {
                        let d = rw.branch_depth(relative_depth)?;
                        rw.put(Instruction::BrIf(d));
                        fv.op(start, &op)?;
                    }
                    Operator::BrTable { ref targets } => {
                        let mut mapped = Vec::with_capacity(targets.len() as usize);
                        for t in targets.targets() {
                            mapped.push(rw.branch_depth(t?)?);
                        }
                        let default = rw.branch_depth(targets.default())?;
                        rw.put(Instruction::BrTable(mapped.into(), default));
                        fv.op(start, &op)?;
                        rw.top().live = false;
                    }
                    Operator::Return | Operator::Unreachable => {
                        rw.out.extend_from_slice(raw);
                        fv.op(start, &op)?;
                        rw.top().live = false;
                    }
                    _ => {
                        rw.out.extend_from_slice(raw);
                        fv.op(start, &op)?;
                    }
                }
            }
        }
    }
    if !finished {
        return Err(UnwindError::Read("function without its end".into()));
    }

    // The frame: every local but the two control ones.
    let saved: Vec<(u32, ValType)> = local_types
        .iter()
        .copied()
        .enumerate()
        .map(|(i, t)| (i as u32, t))
        .chain(
            rw.temps
                .iter()
                .copied()
                .enumerate()
                .map(|(i, t)| (base + 2 + i as u32, t)),
        )
        .collect();
    let mut frame_save = Vec::new();
    let size = frame_code(&mut frame_save, sh.rt, &saved, ptr, false);
    stats::add(&stats::FUNCS, 1);
    stats::add(&stats::LOCALS, saved.len());

    // Unwind: the site number is on the stack.
    let frame_at = rw.out.len();
    rw.put(Instruction::I32Const(size as i32));
    rw.put(Instruction::Call(sh.rt.push));
    rw.put(Instruction::LocalSet(ptr));
    rw.out.extend_from_slice(&frame_save);
    for &t in results {
        rw.put(zero(t));
    }
    rw.put(Instruction::End);

    // Locals, then the rewind prologue, then the code.
    let mut out = Vec::with_capacity(rw.out.len() + 64 + 8 * saved.len());
    let mut decls: Vec<(u32, EVal)> = Vec::new();
    for (count, t) in groups {
        decls.push((count, enc(t)?));
    }
    decls.push((2, EVal::I32));
    for &t in &rw.temps {
        let e = enc(t)?;
        match decls.last_mut() {
            Some((count, last)) if *last == e => *count += 1,
            _ => decls.push((1, e)),
        }
    }
    (decls.len() as u32).encode(&mut out);
    for (count, t) in &decls {
        count.encode(&mut out);
        t.encode(&mut out);
    }
    // Rewinding: pop the frame, in the body's dispatch.
    let mut pop = Vec::new();
    put(&mut pop, Instruction::I32Const(size as i32));
    put(&mut pop, Instruction::Call(sh.rt.pop));
    put(&mut pop, Instruction::LocalSet(target));
    put(&mut pop, Instruction::LocalSet(ptr));
    frame_code(&mut pop, sh.rt, &saved, ptr, true);
    stats::add(&stats::FRAME, pop.len() + rw.out.len() - frame_at);
    match rw.restore_at {
        Some(at) => {
            out.extend_from_slice(&rw.out[..at]);
            out.extend_from_slice(&pop);
            out.extend_from_slice(&rw.out[at..]);
        }
        None => out.extend_from_slice(&rw.out),
    }
    Ok(out)
}

fn store(t: ValType, off: u32) -> Instruction<'static> {
    match t {
        ValType::I32 => Instruction::I32Store(mem(off)),
        ValType::I64 => Instruction::I64Store(mem(off)),
        ValType::F32 => Instruction::F32Store(mem(off)),
        ValType::F64 => Instruction::F64Store(mem(off)),
        _ => Instruction::V128Store(mem(off)),
    }
}

fn load(t: ValType, off: u32) -> Instruction<'static> {
    match t {
        ValType::I32 => Instruction::I32Load(mem(off)),
        ValType::I64 => Instruction::I64Load(mem(off)),
        ValType::F32 => Instruction::F32Load(mem(off)),
        ValType::F64 => Instruction::F64Load(mem(off)),
        _ => Instruction::V128Load(mem(off)),
    }
}

fn zero(t: ValType) -> Instruction<'static> {
    match t {
        ValType::I32 => Instruction::I32Const(0),
        ValType::I64 => Instruction::I64Const(0),
        ValType::F32 => Instruction::F32Const(Ieee32::new(0)),
        ValType::F64 => Instruction::F64Const(Ieee64::new(0)),
        _ => Instruction::V128Const(0),
    }
}
