//! Tern's own unwind transform (`tern-unwind`, frame layout 3).
//!
//! It gives a module the same five entry points as binaryen's Asyncify
//! (`asyncify_start_unwind`, `_stop_unwind`, `_start_rewind`,
//! `_stop_rewind`, `_get_state`) and the same buffer header (`{current,
//! end}` at the buffer address), so the monitor captures both alike. Its
//! frames are its own: an image records which transform made it.
//!
//! **The prepared module only unwinds.** Code that runs while nobody is
//! migrating pays for the ability to leave, never for the ability to come
//! back: rewinding is done at restore time by [`crate::resume`], which
//! builds a small module holding a *continuation copy* of each function on
//! the captured stack, entered in the middle, at the saved call site. So
//! the prepared code has no rewind dispatch and no control-flow merge
//! points for it (the cost of the first version of this transform, and of
//! Asyncify, in hot loops).
//!
//! **What is rewritten.** A function is instrumented only if it can *unwind*:
//! it calls `tern.yield` or a blocking WASI import, directly or through
//! other functions, or through `call_indirect` of a type that some
//! address-taken function able to unwind has. Every other function is copied
//! byte for byte, so clang's many small helpers keep their size and speed.
//!
//! **Sites.** In an instrumented function, each reachable call that can
//! unwind is a *site*, numbered in order. After it: `i32.const id;
//! global.get $state; br_if $exit; drop`: when the callee is unwinding,
//! control leaves through an *exit path*, a block at the function's
//! outside, which saves the frame and returns. A frame is the site number,
//! function index and frame size (see [`FRAME_HEADER`]), then a slot for
//! every local grouped by type; a site writes only the slots of the locals
//! live after it ([`crate::liveness`]), and a function has a few exit
//! paths, one per set of locals saved (see `exit_paths`).
//!
//! **Migration points unwind inline, without a call.** [`crate::points`]
//! puts `if (pause flag) call $tern.yield` at loop headers and recursive
//! functions' entries. A call there, even one never taken, makes every
//! function with a loop a non-leaf and has Cranelift keep values in
//! callee-saved registers across every loop (measured: flite 1.8x slower
//! than without points). So the call becomes `i32.const id; $skip == 0;
//! br_if $exit; drop; $skip -= 1`, where `$skip` (the `tern_pause`
//! global) counts points to pass before stopping (0 but in tests). A
//! point's exit path calls `tern.yield` first (the host opens the unwind
//! buffer and starts unwinding), then saves the frame. A continuation
//! copy entered at a point starts after the decrement and calls
//! `tern.yield` in the point's place, as it repeats an import call.
//!
//! **Only locals are live across an unwind.** At each site, and before each
//! `block`/`loop`/`if` containing one, what lies on the current operand
//! stack below what the call or construct takes goes to fresh locals, and
//! is pushed back after it. The arguments of a call to an import go to
//! locals too and are pushed just before the call, so that a continuation
//! copy can make that call again. No other code changes form.
//!
//! **Exports for the continuation module.** Every function, global and
//! table is exported as `tern.f<i>`, `tern.g<i>`, `tern.t<i>`, so that
//! copies call and read the guest's own instances of them.
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

use crate::liveness::Locals;
use crate::{BLOCKING_WASI, PAUSE_EXPORT, WASI_MODULE, YIELD_IMPORT};

/// Name recorded in images for this transform.
pub const TRANSFORM_NAME: &str = "tern-unwind";
/// Version of the frame layout and of the prepared form. Bump it whenever
/// the prepared output or the saved frames could change for the same input.
/// Version 1 rewound inside the prepared module; version 2 called
/// `tern.yield` at every migration point. Their images are refused.
pub const VERSION: u32 = 3;

/// Bytes before a frame's locals: site number, function index, frame size
/// (each an `i32`, little-endian, at offsets 0, 4 and 8).
pub const FRAME_HEADER: u32 = 12;

/// Export name prefixes for the continuation module (see the module docs).
pub const FUNC_EXPORT: &str = "tern.f";
/// See [`FUNC_EXPORT`].
pub const GLOBAL_EXPORT: &str = "tern.g";
/// See [`FUNC_EXPORT`].
pub const TABLE_EXPORT: &str = "tern.t";

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
    pub static SITE: AtomicU64 = AtomicU64::new(0);
    pub static CONSTRUCT: AtomicU64 = AtomicU64::new(0);
    pub static RESTORE: AtomicU64 = AtomicU64::new(0);
    pub static FRAME: AtomicU64 = AtomicU64::new(0);
    pub static EXPORTS: AtomicU64 = AtomicU64::new(0);
    pub static SITES: AtomicU64 = AtomicU64::new(0);
    pub static FUNCS: AtomicU64 = AtomicU64::new(0);
    pub static LOCALS: AtomicU64 = AtomicU64::new(0);
    pub static PATHS: AtomicU64 = AtomicU64::new(0);
    pub fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn print() {
        if std::env::var_os("TERN_UNWIND_STATS").is_none() {
            return;
        }
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        eprintln!(
            "unwind: funcs {} sites {} exit-paths {} frame-locals {} | bytes: site {} construct {} restore {} frame {} | exports {}",
            g(&FUNCS), g(&SITES), g(&PATHS), g(&LOCALS), g(&SITE), g(&CONSTRUCT), g(&RESTORE), g(&FRAME), g(&EXPORTS)
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
    /// Tables, imported and defined.
    tables: u32,
    /// Per function: can it unwind?
    can_unwind: Vec<bool>,
    /// Per canonical type: can a `call_indirect` of it unwind?
    unwind_type: Vec<bool>,
    /// Segment operators used by functions that can unwind, each moved to
    /// a helper function (a continuation copy lives in another module and
    /// cannot name the guest's segments, but can call the helper).
    segment_ops: Vec<SegmentOp>,
    /// The `tern.yield` import and the pause flag ([`crate::points`]):
    /// a call to it is a migration point, unwound inline (see the module docs).
    yield_func: Option<u32>,
    pause_global: Option<u32>,
}

/// An operator naming a data or element segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum SegmentOp {
    MemoryInit { data: u32, mem: u32 },
    DataDrop { data: u32 },
    TableInit { elem: u32, table: u32 },
    ElemDrop { elem: u32 },
}

impl SegmentOp {
    fn of(op: &Operator) -> Option<SegmentOp> {
        Some(match *op {
            Operator::MemoryInit { data_index, mem } => SegmentOp::MemoryInit {
                data: data_index,
                mem,
            },
            Operator::DataDrop { data_index } => SegmentOp::DataDrop { data: data_index },
            Operator::TableInit { elem_index, table } => SegmentOp::TableInit {
                elem: elem_index,
                table,
            },
            Operator::ElemDrop { elem_index } => SegmentOp::ElemDrop { elem: elem_index },
            _ => return None,
        })
    }

    /// The helper's parameters (all `i32`: Tern takes 32-bit memories and
    /// tables only) and body.
    fn helper(&self) -> (usize, Instruction<'static>) {
        match *self {
            SegmentOp::MemoryInit { data, mem } => (
                3,
                Instruction::MemoryInit {
                    mem,
                    data_index: data,
                },
            ),
            SegmentOp::DataDrop { data } => (0, Instruction::DataDrop(data)),
            SegmentOp::TableInit { elem, table } => (
                3,
                Instruction::TableInit {
                    elem_index: elem,
                    table,
                },
            ),
            SegmentOp::ElemDrop { elem } => (0, Instruction::ElemDrop(elem)),
        }
    }
}

impl Scan {
    /// A call to `tern.yield` (a migration point), when the module has
    /// the pause flag that goes with it.
    fn point_flag(&self, op: &Operator) -> Option<u32> {
        match op {
            Operator::Call { function_index } if Some(*function_index) == self.yield_func => {
                self.pause_global
            }
            _ => None,
        }
    }

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

    /// Whether a site calls an import (its arguments are kept in locals,
    /// so that the restore-time copy can make the call again).
    fn calls_import(&self, op: &Operator) -> bool {
        matches!(op, Operator::Call { function_index } if *function_index < self.imported)
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
    let mut tables = 0u32;
    let mut sources = Vec::new();
    let mut taken = Vec::new();
    // (callee, caller) and (type, caller)
    let mut calls: Vec<(u32, u32)> = Vec::new();
    let mut indirect: Vec<(u32, u32)> = Vec::new();
    let mut defined = 0u32;
    let mut segment_ops: Vec<(u32, SegmentOp)> = Vec::new();
    let mut yield_func = None;
    let mut pause_global = None;
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
                            if (imp.module, imp.name) == YIELD_IMPORT {
                                yield_func = Some(func_types.len() as u32);
                            }
                            func_types.push(t);
                            imported += 1;
                        }
                        TypeRef::Global(_) => globals += 1,
                        TypeRef::Table(_) => tables += 1,
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    func_types.push(t?);
                }
            }
            Payload::TableSection(r) => tables += r.count(),
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e?;
                    if e.name == PAUSE_EXPORT && e.kind == wasmparser::ExternalKind::Global {
                        pause_global = Some(e.index);
                    }
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
                        ref other => {
                            if let Some(s) = SegmentOp::of(other) {
                                segment_ops.push((caller, s));
                            }
                            note(other, &mut taken)
                        }
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
    let mut segment_ops: Vec<SegmentOp> = segment_ops
        .into_iter()
        .filter(|&(f, _)| can_unwind[f as usize])
        .map(|(_, s)| s)
        .collect();
    segment_ops.sort_unstable();
    segment_ops.dedup();
    Ok(Scan {
        segment_ops,
        yield_func,
        pause_global,
        types,
        canon,
        func_types,
        imported,
        globals,
        tables,
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
    let nfuncs = scan.func_types.len() as u32;
    let state = scan.globals;
    let data = scan.globals + 1;
    let rt = runtime(
        state,
        data,
        ntypes + body_type_list.len() as u32,
        nfuncs,
        &scan.segment_ops,
    );
    let shared = Shared {
        wasm,
        scan: &scan,
        state,
        body_types: &body_types,
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
                // What continuation copies may use (see `crate::resume`).
                for f in 0..nfuncs + rt.funcs.len() as u32 {
                    exports.export(&format!("{FUNC_EXPORT}{f}"), ExportKind::Func, f);
                }
                for g in 0..scan.globals + 2 {
                    exports.export(&format!("{GLOBAL_EXPORT}{g}"), ExportKind::Global, g);
                }
                for t in 0..scan.tables {
                    exports.export(&format!("{TABLE_EXPORT}{t}"), ExportKind::Table, t);
                }
                stats::add(
                    &stats::EXPORTS,
                    (nfuncs + scan.globals + scan.tables) as usize,
                );
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

/// Bytes a value of `t` takes in a frame.
pub fn size_of(t: ValType) -> u32 {
    match t {
        ValType::I32 | ValType::F32 => 4,
        ValType::I64 | ValType::F64 => 8,
        _ => 16,
    }
}

pub(crate) fn mem(offset: u32) -> MemArg {
    MemArg {
        offset: offset as u64,
        align: 0,
        memory_index: 0,
    }
}

fn put(out: &mut Vec<u8>, i: Instruction) {
    i.encode(out);
}

/// The value types a frame holds, in frame order: the locals of each type
/// follow each other in index order, from [`FRAME_HEADER`] on.
pub const FRAME_TYPES: [ValType; 5] = [
    ValType::I32,
    ValType::I64,
    ValType::F32,
    ValType::F64,
    ValType::V128,
];
/// The `br_if` opcode.
const BR_IF: u8 = 0x0d;
/// Locals moved by one save helper call, at most.
const CHUNK: usize = 8;

/// The frame layout of a function whose saved locals have these types (in
/// local index order): each local's offset in the frame, and the frame
/// size. Shared by the unwind code here and the copies of
/// [`crate::resume`].
pub fn frame_layout(saved: &[ValType]) -> (Vec<u32>, u32) {
    let mut offsets = vec![0; saved.len()];
    let mut off = FRAME_HEADER;
    for t in FRAME_TYPES {
        for (i, &lt) in saved.iter().enumerate() {
            if lt == t {
                offsets[i] = off;
                off += size_of(t);
            }
        }
    }
    (offsets, off)
}

/// Functions the transform adds after the module's own: the five exported
/// control functions, the frame push, and per value type and count (2 to
/// [`CHUNK`]) a helper that stores that many values, so a frame of many
/// locals costs a few bytes per local in each function.
struct Runtime {
    /// New types, appended to the type section in this order.
    types: Vec<(Vec<EVal>, Vec<EVal>)>,
    /// New functions: (type index, body).
    funcs: Vec<(u32, Vec<u8>)>,
    /// Function indices.
    push: u32,
    first_helper: u32,
    /// Helpers for [`Scan::segment_ops`], in that order.
    first_segment_helper: u32,
}

impl Runtime {
    /// The save helper for `count` values of `t`.
    fn helper(&self, t: ValType, count: usize) -> u32 {
        let ti = FRAME_TYPES.iter().position(|&f| f == t).unwrap_or(4);
        self.first_helper + (ti * (CHUNK - 1) + count - 2) as u32
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

fn runtime(
    state: u32,
    data: u32,
    first_type: u32,
    first_func: u32,
    segment_ops: &[SegmentOp],
) -> Runtime {
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
    // push(site, func, size) -> ptr: takes a frame of `size` bytes and
    // writes its header.
    let push_ty = ty(vec![EVal::I32, EVal::I32, EVal::I32], vec![EVal::I32]);
    funcs.push((
        push_ty,
        body(
            &[(1, EVal::I32)],
            &[
                I::GlobalGet(data),
                I::I32Load(mem(0)),
                I::LocalSet(3),
                I::LocalGet(3),
                I::LocalGet(2),
                I::I32Add,
                I::GlobalGet(data),
                I::I32Load(mem(4)),
                I::I32GtU,
                I::If(BlockType::Empty),
                I::Unreachable,
                I::End,
                I::LocalGet(3),
                I::LocalGet(0),
                I::I32Store(mem(0)),
                I::LocalGet(3),
                I::LocalGet(1),
                I::I32Store(mem(4)),
                I::LocalGet(3),
                I::LocalGet(2),
                I::I32Store(mem(8)),
                I::GlobalGet(data),
                I::LocalGet(3),
                I::LocalGet(2),
                I::I32Add,
                I::I32Store(mem(0)),
                I::LocalGet(3),
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
        }
    }
    let first_segment_helper = first_func + funcs.len() as u32;
    for op in segment_ops {
        let (n, i) = op.helper();
        let mut code: Vec<Instruction> = (0..n as u32).map(I::LocalGet).collect();
        code.push(i);
        funcs.push((ty(vec![EVal::I32; n], vec![]), body(&[], &code)));
    }
    Runtime {
        types,
        funcs,
        push: first_func + 5,
        first_helper,
        first_segment_helper,
    }
}

/// What the per-function rewrite needs from the module.
struct Shared<'a> {
    wasm: &'a [u8],
    scan: &'a Scan,
    state: u32,
    body_types: &'a HashMap<Vec<ValType>, u32>,
    rt: &'a Runtime,
}

/// First pass over a function: per construct (the function body is
/// construct 0), in order of appearance, whether it holds a site. A site
/// counts only where the code is reachable (syntactically, as validation
/// defines it): code after `br`, `br_table`, `return` or `unreachable` up
/// to the end of its construct never runs.
fn plan(scan: &Scan, ops: &[Operator]) -> Result<Vec<bool>, UnwindError> {
    struct Open {
        ord: usize,
        live: bool,
        dead: bool,
    }
    let mut holds = vec![false];
    let mut stack = vec![Open {
        ord: 0,
        live: true,
        dead: false,
    }];
    for op in ops {
        let Some(top) = stack.last_mut() else {
            return Err(UnwindError::Read("code after the function's end".into()));
        };
        match op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => {
                let dead = top.dead || !top.live;
                holds.push(false);
                stack.push(Open {
                    ord: holds.len() - 1,
                    live: true,
                    dead,
                });
            }
            Operator::Else => top.live = true,
            Operator::End => {
                let open = stack.pop().expect("checked above");
                if let Some(parent) = stack.last() {
                    if holds[open.ord] && !open.dead {
                        holds[parent.ord] = true;
                    }
                }
            }
            call if scan.is_site(call) && !top.dead && top.live => holds[top.ord] = true,
            Operator::Br { .. }
            | Operator::BrTable { .. }
            | Operator::Return
            | Operator::Unreachable => top.live = false,
            _ => {}
        }
    }
    Ok(holds)
}

/// Values kept in temporary locals: (type, local).
type Temps = Vec<(ValType, u32)>;

/// An open frame of the original code while rewriting.
struct Frame {
    /// Label level of this frame in the output (see [`Rewriter::level`]).
    level: u32,
    live: bool,
    dead: bool,
    /// Values below this construct, kept in locals until its end.
    restore: Vec<(ValType, u32)>,
    results: usize,
    is_loop: bool,
}

/// Second pass over a function: writes the instrumented code.
struct Rewriter<'a> {
    sh: &'a Shared<'a>,
    holds: &'a [bool],
    out: Vec<u8>,
    /// Labels open in the output at this point (the function's own is 0).
    level: u32,
    frames: Vec<Frame>,
    next_ord: usize,
    next_site: u32,
    next_local: u32,
    temps: Vec<ValType>,
    free: HashMap<ValType, Vec<u32>>,
    /// Temporaries in use (holding values across a site or construct).
    held: Locals,
    /// Index in the original body of the instruction being rewritten.
    op_index: usize,
    /// The original locals live after each site's call, by its index.
    live: HashMap<usize, Locals>,
    /// Loops open around the instruction being rewritten.
    loops: u32,
    /// Every site written, for choosing and patching its exit path.
    sites: Vec<SiteExit>,
}

/// A site's branch to the block that saves its frame: where its depth goes
/// (right after its `br_if` opcode in the body; written once the paths are
/// known), its label level inside `$body`, and what it must save.
struct SiteExit {
    depth_at: usize,
    level: u32,
    key: PathKey,
    weight: u64,
}

/// What an exit path does: a migration point's first calls `tern.yield`;
/// each saves its set of locals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PathKey {
    point: bool,
    saved: Locals,
}

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
            self.held.insert(l);
            return Ok(l);
        }
        let l = self.next_local;
        self.next_local += 1;
        self.temps.push(t);
        self.held.insert(l);
        Ok(l)
    }

    fn release(&mut self, temps: &[(ValType, u32)]) {
        for &(t, l) in temps {
            self.free.entry(t).or_default().push(l);
            self.held.remove(l);
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

    /// Moves what lies below the top `takes` values of the current frame
    /// to locals (returned), keeping the top `takes` values on the stack;
    /// with `keep_args`, those go through locals too (pushed back with
    /// `local.get`s just before the call that takes them; they are
    /// returned second, free again but to be saved by the call's site).
    fn clear_below(
        &mut self,
        fv: &FuncValidator<ValidatorResources>,
        takes: usize,
        keep_args: bool,
    ) -> Result<(Temps, Temps), UnwindError> {
        let k = Self::frame_values(fv)?;
        if k == takes && !(keep_args && takes > 0) {
            return Ok((Vec::new(), Vec::new()));
        }
        let taken = self.spill(fv, 0, takes)?;
        let below = self.spill(fv, takes, k - takes)?;
        self.push(&taken);
        self.release(&taken);
        Ok((below, taken))
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
        let path = !dead && self.holds[ord];
        let (np, nr) = self.sh.scan.block_arity(bt);
        let is_if = matches!(op, Operator::If { .. });
        let at = self.out.len();
        let restore = if path {
            self.clear_below(fv, np + usize::from(is_if), false)?.0
        } else {
            Vec::new()
        };
        stats::add(&stats::CONSTRUCT, self.out.len() - at);
        self.out.extend_from_slice(raw);
        self.level += 1;
        fv.op(offset, op)?;
        let is_loop = matches!(op, Operator::Loop { .. });
        self.loops += u32::from(is_loop);
        self.frames.push(Frame {
            level: self.level,
            live: true,
            dead,
            restore,
            results: nr,
            is_loop,
        });
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
        let at = self.out.len();
        stats::add(&stats::SITES, 1);
        let point = self.sh.scan.point_flag(op);
        let keep_args = point.is_none() && self.sh.scan.calls_import(op);
        let (below, args) = self.clear_below(fv, nargs, keep_args)?;
        // What the frame must hold: the locals the rest of the function
        // reads, the temporaries in use (values below the call, and
        // around enclosing constructs), and an import call's arguments.
        let mut saved = self
            .live
            .get(&self.op_index)
            .cloned()
            .ok_or_else(|| UnwindError::Read("a site without liveness".into()))?;
        for l in self.held.iter() {
            saved.insert(l);
        }
        for &(_, l) in &args {
            saved.insert(l);
        }
        let id = self.next_site;
        self.next_site += 1;
        if let Some(skip) = point {
            // A migration point, inline: no call (see the module docs).
            self.put(Instruction::I32Const(id as i32));
            self.put(Instruction::GlobalGet(skip));
            self.put(Instruction::I32Eqz);
        } else {
            self.out.extend_from_slice(raw);
            self.put(Instruction::I32Const(id as i32));
            self.put(Instruction::GlobalGet(self.sh.state));
        }
        // br_if to the site's exit path: its depth is written when the
        // function is put together, once the paths are known.
        self.out.push(BR_IF);
        let depth_at = self.out.len();
        self.put(Instruction::Drop);
        if let Some(skip) = point {
            for i in [
                Instruction::GlobalGet(skip),
                Instruction::I32Const(1),
                Instruction::I32Sub,
                Instruction::GlobalSet(skip),
            ] {
                self.put(i);
            }
        }
        self.sites.push(SiteExit {
            depth_at,
            level: self.level,
            key: PathKey {
                point: point.is_some(),
                saved: saved.trimmed(),
            },
            weight: 1u64 << (4 * self.loops.min(15)),
        });
        fv.op(offset, op)?;
        if !below.is_empty() {
            let res = self.spill(fv, 0, nres)?;
            self.push(&below);
            self.push(&res);
            self.release(&res);
        }
        self.release(&below);
        stats::add(&stats::SITE, self.out.len() - at - raw.len());
        Ok(())
    }
}

/// Save code for the locals `saved` (local, type, offset in the frame,
/// in increasing offsets), at the frame address in local `ptr`: runs of
/// adjacent locals of one type go through a save helper, eight at most.
fn frame_save(out: &mut Vec<u8>, rt: &Runtime, saved: &[(u32, ValType, u32)], ptr: u32) {
    use Instruction as I;
    let mut i = 0;
    while i < saved.len() {
        let (_, t, off) = saved[i];
        let mut j = i + 1;
        while j < saved.len()
            && j - i < CHUNK
            && saved[j].1 == t
            && saved[j].2 == saved[j - 1].2 + size_of(t)
        {
            j += 1;
        }
        if j - i == 1 {
            put(out, I::LocalGet(ptr));
            put(out, I::LocalGet(saved[i].0));
            put(out, store(t, off));
        } else {
            put(out, I::LocalGet(ptr));
            put(out, I::I32Const(off as i32));
            put(out, I::I32Add);
            for &(l, _, _) in &saved[i..j] {
                put(out, I::LocalGet(l));
            }
            put(out, I::Call(rt.helper(t, j - i)));
        }
        i = j;
    }
}

/// Most exit paths a function gets (see [`exit_paths`]).
const MAX_PATHS: usize = 8;

/// Chooses the exit paths of a function's sites. Every site could save
/// the union of what all its function's sites save, in one shared path
/// per kind (points, calls); a set of locals gets a path of its own when
/// some of its sites are in loops and it saves less than that union (by
/// two locals at least), heaviest first (sites in the deepest loops), at
/// most [`MAX_PATHS`] in all: a path costs code, and what matters is to
/// keep dead locals out of hot loops. Returns the paths (the shared ones
/// last: calls', then points'), per site its path, and the index of the
/// first shared path.
fn exit_paths(sites: &[SiteExit]) -> (Vec<PathKey>, Vec<usize>, usize) {
    let mut weight: HashMap<&PathKey, u64> = HashMap::new();
    for s in sites {
        *weight.entry(&s.key).or_default() += s.weight;
    }
    let mut keys: Vec<(&PathKey, u64)> = weight.into_iter().collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut union = Locals::new(0);
    for (k, _) in &keys {
        for l in k.saved.iter() {
            union.insert(l);
        }
    }
    let all = union.len();
    let kinds = 1 + usize::from(keys.iter().any(|k| k.0.point) && keys.iter().any(|k| !k.0.point));
    let mut paths: Vec<PathKey> = Vec::new();
    let mut index: HashMap<&PathKey, usize> = HashMap::new();
    let mut shared: Vec<&PathKey> = Vec::new();
    for &(k, w) in &keys {
        let gain = all - k.saved.len();
        let in_loop = w >= 16;
        if in_loop && paths.len() + kinds < MAX_PATHS && gain >= 2 {
            index.insert(k, paths.len());
            paths.push((*k).clone());
        } else {
            shared.push(k);
        }
    }
    // The shared paths, innermost: the calls' and then the points', which
    // calls `tern.yield` and falls into the calls' (see `instrument`).
    let own = paths.len();
    for point in [false, true] {
        if shared.iter().any(|k| k.point == point) {
            paths.push(PathKey {
                point,
                saved: union.clone(),
            });
        }
    }
    for k in shared {
        let at = (own..paths.len())
            .find(|&p| paths[p].point == k.point)
            .expect("a shared path of each kind used");
        index.insert(k, at);
    }
    let of_site = sites.iter().map(|s| index[&s.key]).collect();
    (paths, of_site, own)
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
    let mut all_ops = Vec::new();
    let mut reader = body.get_operators_reader()?;
    while !reader.eof() {
        all_ops.push(reader.read()?);
    }
    let holds = plan(scan, &all_ops)?;
    // What is live after each site's call.
    let site_at: Vec<usize> = all_ops
        .iter()
        .enumerate()
        .filter(|(_, op)| scan.is_site(op))
        .map(|(i, _)| i)
        .collect();
    let live = crate::liveness::live_after(&all_ops, local_types.len(), &site_at)
        .map_err(UnwindError::Read)?;
    drop(all_ops);
    let base = local_types.len() as u32;
    let mut rw = Rewriter {
        sh,
        holds: &holds,
        out: Vec::with_capacity(body.as_bytes().len() * 2),
        level: 0,
        frames: Vec::new(),
        next_ord: 1,
        next_site: 0,
        next_local: base,
        temps: Vec::new(),
        free: HashMap::new(),
        held: Locals::new(0),
        op_index: 0,
        live: site_at.into_iter().zip(live).collect(),
        loops: 0,
        sites: Vec::new(),
    };
    let results = ty.results();
    let body_bt = match results.len() {
        0 => BlockType::Empty,
        1 => BlockType::Result(enc(results[0])?),
        _ => BlockType::FunctionType(sh.body_types[results]),
    };
    // The body goes into `block $body`, at level 1 here; the exit paths'
    // blocks are put around it at the end, once they are known.
    rw.put(Instruction::Block(body_bt));
    rw.level = 1;
    rw.frames.push(Frame {
        level: rw.level,
        live: true,
        dead: false,
        restore: Vec::new(),
        results: results.len(),
        is_loop: false,
    });

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
            }
            Operator::Else => {
                rw.out.extend_from_slice(raw);
                fv.op(start, &op)?;
                rw.top().live = true;
            }
            Operator::End => {
                let f = rw.frames.pop().expect("inside the function");
                rw.loops -= u32::from(f.is_loop);
                if rw.frames.is_empty() {
                    // The function's end: close $body and return.
                    rw.put(Instruction::End);
                    rw.put(Instruction::Return);
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
            ref other => {
                match SegmentOp::of(other) {
                    Some(s) => {
                        let i = scan.segment_ops.binary_search(&s).map_err(|_| {
                            UnwindError::Read("segment operator not planned".into())
                        })?;
                        rw.put(Instruction::Call(sh.rt.first_segment_helper + i as u32));
                    }
                    None => rw.out.extend_from_slice(raw),
                }
                fv.op(start, &op)?;
            }
        }
        rw.op_index += 1;
    }
    if !finished {
        return Err(UnwindError::Read("function without its end".into()));
    }

    // The frame layout: every local but the frame pointer (the last one),
    // each at its own offset; a site writes only those it must save.
    let ptr = base + rw.temps.len() as u32;
    let all: Vec<ValType> = local_types.iter().chain(rw.temps.iter()).copied().collect();
    let (offsets, size) = frame_layout(&all);
    stats::add(&stats::FUNCS, 1);
    stats::add(&stats::LOCALS, all.len());

    // Exit paths: `block $p0 (result i32) .. block $p<k-1> (result i32)`
    // around `$body`; site depths patched to their path's block.
    let (paths, of_site, first_shared) = exit_paths(&rw.sites);
    stats::add(&stats::PATHS, paths.len());
    let k = paths.len() as u32;
    // Locals (the original ones, the temporaries, the frame pointer last),
    // then the code.
    let mut code = Vec::with_capacity(rw.out.len() + 16 + 2 * groups.len() + 64 * paths.len());
    let mut decls: Vec<(u32, EVal)> = Vec::new();
    for (count, t) in groups {
        decls.push((count, enc(t)?));
    }
    for &t in rw.temps.iter().chain(&[ValType::I32]) {
        let e = enc(t)?;
        match decls.last_mut() {
            Some((count, last)) if *last == e => *count += 1,
            _ => decls.push((1, e)),
        }
    }
    (decls.len() as u32).encode(&mut code);
    for (count, t) in &decls {
        count.encode(&mut code);
        t.encode(&mut code);
    }
    for _ in 0..k {
        put(&mut code, Instruction::Block(BlockType::Result(EVal::I32)));
    }
    // The body, with each site's depth (sites are in order of position).
    let mut from = 0;
    for (site, &p) in rw.sites.iter().zip(&of_site) {
        // $body is at level k + 1 (1 while writing it); path p at p + 1.
        let depth = site.level + k - 1 - p as u32;
        code.extend_from_slice(&rw.out[from..site.depth_at]);
        depth.encode(&mut code);
        from = site.depth_at;
    }
    code.extend_from_slice(&rw.out[from..]);
    let frame_at = code.len();
    // Innermost path first: each ends the block it follows.
    for (p, path) in paths.iter().enumerate().rev() {
        put(&mut code, Instruction::End);
        if path.point {
            // A migration point: the host opens the buffer and starts
            // unwinding now.
            let y = scan.yield_func.expect("points call tern.yield");
            put(&mut code, Instruction::Call(y));
            if p > first_shared {
                // The shared points' path: the calls' (just outside it)
                // saves the same.
                continue;
            }
        }
        // The site number is on the stack.
        put(&mut code, Instruction::I32Const(func as i32));
        put(&mut code, Instruction::I32Const(size as i32));
        put(&mut code, Instruction::Call(sh.rt.push));
        put(&mut code, Instruction::LocalSet(ptr));
        let mut saved: Vec<(u32, ValType, u32)> = path
            .saved
            .iter()
            .filter(|&l| l < ptr)
            .map(|l| (l, all[l as usize], offsets[l as usize]))
            .collect();
        let shared = p >= first_shared;
        if saved.len() * 4 >= all.len() * 3 || (shared && saved.len() * 2 >= all.len()) {
            // Nearly everything: saving all of it is shorter code (runs
            // of adjacent locals), for a little more liveness on a cold path.
            saved = (0..ptr)
                .map(|l| (l, all[l as usize], offsets[l as usize]))
                .collect();
        }
        saved.sort_by_key(|s| s.2);
        frame_save(&mut code, sh.rt, &saved, ptr);
        for &t in results {
            put(&mut code, zero(t));
        }
        put(&mut code, Instruction::Return);
    }
    put(&mut code, Instruction::End);
    stats::add(&stats::FRAME, code.len() - frame_at);
    Ok(code)
}

pub(crate) fn store(t: ValType, off: u32) -> Instruction<'static> {
    match t {
        ValType::I32 => Instruction::I32Store(mem(off)),
        ValType::I64 => Instruction::I64Store(mem(off)),
        ValType::F32 => Instruction::F32Store(mem(off)),
        ValType::F64 => Instruction::F64Store(mem(off)),
        _ => Instruction::V128Store(mem(off)),
    }
}

pub(crate) fn load(t: ValType, off: u32) -> Instruction<'static> {
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
