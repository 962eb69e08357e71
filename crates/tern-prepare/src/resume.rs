//! Rewinding by continuation copies, made at restore time (`tern-unwind` 2).
//!
//! A module prepared by [`crate::unwind`] can only *leave*: each function on
//! the stack saves a frame (site number, function index, size, locals) and
//! returns. To resume, Tern builds, from the frames saved in an image, one
//! small module per distinct frame holding a *continuation copy*: the
//! function's own prepared code, which loads its frame and starts executing
//! in the middle, at the saved call site, restructured so that it enters
//! there:
//!
//! ```text
//! block $B            ;; for each block or if around the site: its end
//!   block $L_after    ;; for each loop around the site:
//!     block $L_again  ;;   a branch back to the loop header lands here...
//!       <the call at the site>
//!       <the rest of each construct's body, innermost first>
//!       br $L_after   ;;   (falling off a loop body leaves the loop)
//!     end
//!     loop ... end    ;;   ...and runs the loop again, unchanged
//!   end
//! end
//! <the rest of the function>
//! ```
//!
//! The call at the site goes to the copy of the next frame down the stack,
//! through a table (`chain`) the host fills in stack order; the innermost
//! frame's site is a call to `tern.yield` or a blocking WASI import, made
//! again with its arguments (kept in locals by the transform). Everything
//! else a copy calls or touches is the guest's own: copies import the
//! prepared module's exports (`tern.f<i>`, `tern.g<i>`, `tern.t<i>`,
//! `memory`). Copies keep the unwind code, so a resumed guest can be
//! captured again at any moment; their frames name the original function,
//! so images never refer to copies.
//!
//! The prepared module thus carries no rewind code at all: normal execution
//! pays nothing for resuming. The cost moves to restore time: building the
//! copies of the functions on the stack (tens of ms) and compiling them.
//! A copy's bytes depend only on the module and its (function, site), so
//! the monitor caches compiled copies by digest and a guest that stops
//! again at the same places (moving back and forth between two nodes)
//! compiles nothing new. The copies of the outermost frames run until those
//! calls return (for a `main` loop, until the program ends) at the speed
//! of the original code: past the entry they are the original code, with
//! each enclosing loop entered once through a block.

use std::collections::BTreeMap;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, CodeSection, Encode, EntityType, ExportKind, ExportSection, FunctionSection,
    GlobalType, ImportSection, Instruction, MemoryType, Module, RefType, TableType, TypeSection,
    ValType as EVal,
};
use wasmparser::{FuncType, FunctionBody, Operator, Parser, Payload, TypeRef, ValType};

use crate::unwind::{frame_layout, load, FRAME_HEADER, FUNC_EXPORT, GLOBAL_EXPORT, TABLE_EXPORT};
use crate::PAUSE_EXPORT;

/// Module name under which a copy imports the guest's exports; each
/// import's name is the export's.
pub const MAIN_MODULE: &str = "tern.main";
/// Module name under which a copy imports what the host makes for one
/// resume: the table [`CHAIN_TABLE`] (entry `d` is the copy for the frame
/// at depth `d`, 0 the outermost) and the `i32` globals [`BUFFER_GLOBAL`]
/// (the unwind buffer's address) and [`DEPTH_GLOBAL`] (the depth reached).
pub const RESUME_MODULE: &str = "tern.resume";
/// See [`RESUME_MODULE`].
pub const CHAIN_TABLE: &str = "chain";
/// See [`RESUME_MODULE`].
pub const BUFFER_GLOBAL: &str = "buffer";
/// See [`RESUME_MODULE`].
pub const DEPTH_GLOBAL: &str = "depth";
/// The export of a copy module: the copy, `[] -> results` of its function.
pub const COPY_EXPORT: &str = "copy";

/// One saved frame: which function, stopped at which site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StackFrame {
    /// Function index in the prepared module.
    pub func: u32,
    /// Site number within that function.
    pub site: u32,
}

/// Why a stack could not be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The saved stack is not a sequence of well-formed frames.
    #[error("the saved stack is corrupt: {0}")]
    Corrupt(String),
    /// A frame names something the module does not have.
    #[error("the saved stack does not fit the module: {0}")]
    Mismatch(String),
    /// A function on the stack uses something a copy cannot (a data or
    /// element segment of the guest's).
    #[error("function {0} on the saved stack uses {1}, which a continuation copy cannot")]
    Unsupported(u32, String),
    /// The module could not be read.
    #[error("reading the module failed: {0}")]
    Read(String),
}

impl From<wasmparser::BinaryReaderError> for ResumeError {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        ResumeError::Read(e.to_string())
    }
}

impl From<wasm_encoder::reencode::Error<ResumeError>> for ResumeError {
    fn from(e: wasm_encoder::reencode::Error<ResumeError>) -> Self {
        match e {
            wasm_encoder::reencode::Error::UserError(e) => e,
            other => ResumeError::Read(other.to_string()),
        }
    }
}

fn read_u32(blob: &[u8], at: usize) -> Option<u32> {
    let b = blob.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The frames of a saved stack (the unwind buffer's contents, innermost
/// frame first, as unwinding pushed them), outermost first.
pub fn frames(blob: &[u8]) -> Result<Vec<StackFrame>, ResumeError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < blob.len() {
        let (Some(site), Some(func), Some(size)) = (
            read_u32(blob, at),
            read_u32(blob, at + 4),
            read_u32(blob, at + 8),
        ) else {
            return Err(ResumeError::Corrupt(format!(
                "a frame header at byte {at} is cut short"
            )));
        };
        let size = size as usize;
        if size < FRAME_HEADER as usize || at + size > blob.len() {
            return Err(ResumeError::Corrupt(format!(
                "the frame at byte {at} claims {size} bytes of {}",
                blob.len() - at
            )));
        }
        out.push(StackFrame { func, site });
        at += size;
    }
    out.reverse();
    Ok(out)
}

/// The continuation of one saved stack: a module per distinct frame.
#[derive(Debug, Clone)]
pub struct Continuation {
    /// One module per distinct (function, site), each exporting
    /// [`COPY_EXPORT`]. A copy's bytes depend only on the prepared module
    /// and its frame, so compiled copies can be cached and reused by
    /// later resumes.
    pub copies: Vec<(StackFrame, Vec<u8>)>,
    /// Per frame (outermost first): the index in `copies` of its copy.
    pub chain: Vec<usize>,
}

/// What the generator needs from the prepared module.
struct Main<'a> {
    types: Vec<FuncType>,
    func_types: Vec<u32>,
    imported_funcs: u32,
    global_types: Vec<wasmparser::GlobalType>,
    table_types: Vec<wasmparser::TableType>,
    bodies: BTreeMap<u32, FunctionBody<'a>>,
    type_section: Option<wasmparser::TypeSectionReader<'a>>,
    pause_global: Option<u32>,
    /// The `tern.yield` import, which a copy entered at a migration point
    /// calls in the point's place.
    yield_func: Option<u32>,
}

fn read_main<'a>(wasm: &'a [u8], wanted: &[u32]) -> Result<Main<'a>, ResumeError> {
    let mut m = Main {
        types: Vec::new(),
        func_types: Vec::new(),
        imported_funcs: 0,
        global_types: Vec::new(),
        table_types: Vec::new(),
        bodies: BTreeMap::new(),
        type_section: None,
        pause_global: None,
        yield_func: None,
    };
    let mut defined = 0u32;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::TypeSection(r) => {
                m.type_section = Some(r.clone());
                for t in r.into_iter_err_on_gc_types() {
                    m.types.push(t?);
                }
            }
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp = imp?;
                    match imp.ty {
                        TypeRef::Func(t) => {
                            if (imp.module, imp.name) == crate::YIELD_IMPORT {
                                m.yield_func = Some(m.func_types.len() as u32);
                            }
                            m.func_types.push(t);
                            m.imported_funcs += 1;
                        }
                        TypeRef::Global(g) => m.global_types.push(g),
                        TypeRef::Table(t) => m.table_types.push(t),
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    m.func_types.push(t?);
                }
            }
            Payload::TableSection(r) => {
                for t in r {
                    m.table_types.push(t?.ty);
                }
            }
            Payload::GlobalSection(r) => {
                for g in r {
                    m.global_types.push(g?.ty);
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e?;
                    if e.name == PAUSE_EXPORT && e.kind == wasmparser::ExternalKind::Global {
                        m.pause_global = Some(e.index);
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let f = m.imported_funcs + defined;
                defined += 1;
                if wanted.binary_search(&f).is_ok() {
                    m.bodies.insert(f, body);
                }
            }
            _ => {}
        }
    }
    Ok(m)
}

fn enc(t: ValType) -> Result<EVal, ResumeError> {
    RoundtripReencoder
        .val_type(t)
        .map_err(|e| ResumeError::Read(e.to_string()))
}

/// Maps the prepared module's indices to the continuation module's, in two
/// passes over the same code: the first records what is used (imports are
/// then numbered in index order), the second maps.
#[derive(Default)]
struct Remap {
    mapping: bool,
    func: u32,
    funcs: BTreeMap<u32, u32>,
    globals: BTreeMap<u32, u32>,
    tables: BTreeMap<u32, u32>,
}

impl Remap {
    fn index(
        mapping: bool,
        map: &mut BTreeMap<u32, u32>,
        i: u32,
    ) -> Result<u32, wasm_encoder::reencode::Error<ResumeError>> {
        if !mapping {
            map.insert(i, 0);
            return Ok(i);
        }
        map.get(&i).copied().ok_or_else(|| {
            wasm_encoder::reencode::Error::UserError(ResumeError::Read(format!(
                "index {i} was not recorded"
            )))
        })
    }

    /// Numbers what was recorded, globals and tables after the ones a copy
    /// imports from the host.
    fn number(&mut self) {
        for (map, first) in [
            (&mut self.funcs, 0),
            (&mut self.globals, OWN_GLOBALS),
            (&mut self.tables, OWN_TABLES),
        ] {
            for (n, v) in map.values_mut().enumerate() {
                *v = first + n as u32;
            }
        }
        self.mapping = true;
    }

    fn unsupported(&self, what: &str) -> wasm_encoder::reencode::Error<ResumeError> {
        wasm_encoder::reencode::Error::UserError(ResumeError::Unsupported(self.func, what.into()))
    }
}

impl Reencode for Remap {
    type Error = ResumeError;

    fn function_index(
        &mut self,
        f: u32,
    ) -> Result<u32, wasm_encoder::reencode::Error<ResumeError>> {
        Self::index(self.mapping, &mut self.funcs, f)
    }

    fn global_index(&mut self, g: u32) -> Result<u32, wasm_encoder::reencode::Error<ResumeError>> {
        Self::index(self.mapping, &mut self.globals, g)
    }

    fn table_index(&mut self, t: u32) -> Result<u32, wasm_encoder::reencode::Error<ResumeError>> {
        Self::index(self.mapping, &mut self.tables, t)
    }

    fn memory_index(&mut self, m: u32) -> Result<u32, wasm_encoder::reencode::Error<ResumeError>> {
        if m == 0 {
            Ok(0)
        } else {
            Err(self.unsupported("a second memory"))
        }
    }

    fn data_index(&mut self, _: u32) -> Result<u32, wasm_encoder::reencode::Error<ResumeError>> {
        Err(self.unsupported("a data segment"))
    }

    fn element_index(&mut self, _: u32) -> Result<u32, wasm_encoder::reencode::Error<ResumeError>> {
        Err(self.unsupported("an element segment"))
    }

    fn tag_index(&mut self, _: u32) -> Result<u32, wasm_encoder::reencode::Error<ResumeError>> {
        Err(self.unsupported("exception handling"))
    }
}

/// Types the continuation module adds after the guest's own.
struct Types {
    first: u32,
    added: Vec<(Vec<EVal>, Vec<EVal>)>,
}

impl Types {
    fn get(&mut self, params: Vec<EVal>, results: Vec<EVal>) -> u32 {
        if let Some(i) = self
            .added
            .iter()
            .position(|t| t.0 == params && t.1 == results)
        {
            return self.first + i as u32;
        }
        self.added.push((params, results));
        self.first + self.added.len() as u32 - 1
    }

    /// A block type producing `vals` from nothing.
    fn producing(&mut self, vals: &[ValType]) -> Result<BlockType, ResumeError> {
        Ok(match vals {
            [] => BlockType::Empty,
            [t] => BlockType::Result(enc(*t)?),
            many => {
                let r = many.iter().map(|t| enc(*t)).collect::<Result<_, _>>()?;
                BlockType::FunctionType(self.get(Vec::new(), r))
            }
        })
    }

    fn results_of(&mut self, f: &FuncType) -> Result<Vec<EVal>, ResumeError> {
        f.results().iter().map(|t| enc(*t)).collect()
    }
}

/// Indices in a copy module of what it imports from the host (first, so
/// their indices are known before the guest's are numbered): the buffer
/// and depth globals and the chain table.
const BUFFER: u32 = 0;
const DEPTH: u32 = 1;
const CHAIN: u32 = 0;
const OWN_GLOBALS: u32 = 2;
const OWN_TABLES: u32 = 1;

/// Builds the continuation of `stack` (outermost frame first) of the
/// prepared module `wasm`.
pub fn build(wasm: &[u8], stack: &[StackFrame]) -> Result<Continuation, ResumeError> {
    if stack.is_empty() {
        return Err(ResumeError::Corrupt("no frames".into()));
    }
    let mut distinct: Vec<StackFrame> = stack.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let mut funcs: Vec<u32> = distinct.iter().map(|f| f.func).collect();
    funcs.dedup();
    let main = read_main(wasm, &funcs)?;
    for f in &funcs {
        if !main.bodies.contains_key(f) {
            return Err(ResumeError::Mismatch(format!(
                "a frame names function {f}, which the module does not define"
            )));
        }
    }
    if main.global_types.len() < 2 {
        return Err(ResumeError::Mismatch(
            "the module was not prepared by tern-unwind".into(),
        ));
    }
    // The outermost frame is the entry point's, called with no arguments.
    let outer = &main.types[main.func_types[stack[0].func as usize] as usize];
    if !outer.params().is_empty() || !outer.results().is_empty() {
        return Err(ResumeError::Mismatch(
            "the outermost frame is not the entry point's".into(),
        ));
    }
    let mut copies = Vec::with_capacity(distinct.len());
    let mut in_import = Vec::with_capacity(distinct.len());
    for fr in &distinct {
        let (module, import) = copy_module(&main, *fr)?;
        copies.push((*fr, module));
        in_import.push(import);
    }
    let chain: Vec<usize> = stack
        .iter()
        .map(|fr| distinct.binary_search(fr).expect("every frame is listed"))
        .collect();
    // The innermost frame is stopped in an import, every other one in a
    // call to a module function (the next frame's).
    for (d, &j) in chain.iter().enumerate() {
        if in_import[j] != (d == chain.len() - 1) {
            let fr = stack[d];
            return Err(ResumeError::Mismatch(format!(
                "frame {d} (function {}, site {}) is not where a frame at that depth can be",
                fr.func, fr.site
            )));
        }
    }
    Ok(Continuation { copies, chain })
}

/// The module holding the copy for one frame, and whether its site calls
/// an import.
fn copy_module(main: &Main, fr: StackFrame) -> Result<(Vec<u8>, bool), ResumeError> {
    let state = main.global_types.len() as u32 - 2;
    let mut types = Types {
        first: main.types.len() as u32,
        added: Vec::new(),
    };
    let mut remap = Remap {
        func: fr.func,
        ..Remap::default()
    };
    if let Some(p) = main.pause_global {
        remap.globals.insert(p, 0);
    }
    // Two passes: record what the copy uses, then map it.
    copy(main, state, &mut remap, &mut types, fr)?;
    remap.number();
    let (body, import) = copy(main, state, &mut remap, &mut types, fr)?;
    let ft = &main.types[main.func_types[fr.func as usize] as usize];
    let results = types.results_of(ft)?;
    let copy_ty = types.get(Vec::new(), results);

    let mut module = Module::new();
    let mut ts = TypeSection::new();
    if let Some(r) = main.type_section.clone() {
        wasm_encoder::reencode::utils::parse_type_section(&mut RoundtripReencoder, &mut ts, r)
            .map_err(|e| ResumeError::Read(e.to_string()))?;
    }
    for (p, r) in &types.added {
        ts.ty().function(p.clone(), r.clone());
    }
    module.section(&ts);

    let mut imports = ImportSection::new();
    for &f in remap.funcs.keys() {
        imports.import(
            MAIN_MODULE,
            &format!("{FUNC_EXPORT}{f}"),
            EntityType::Function(main.func_types[f as usize]),
        );
    }
    let mutable_i32 = GlobalType {
        val_type: EVal::I32,
        mutable: true,
        shared: false,
    };
    imports.import(
        RESUME_MODULE,
        BUFFER_GLOBAL,
        EntityType::Global(mutable_i32),
    );
    imports.import(RESUME_MODULE, DEPTH_GLOBAL, EntityType::Global(mutable_i32));
    for &g in remap.globals.keys() {
        let gt = main.global_types[g as usize];
        let name = if Some(g) == main.pause_global {
            PAUSE_EXPORT.to_string()
        } else {
            format!("{GLOBAL_EXPORT}{g}")
        };
        imports.import(
            MAIN_MODULE,
            &name,
            EntityType::Global(GlobalType {
                val_type: enc(gt.content_type)?,
                mutable: gt.mutable,
                shared: false,
            }),
        );
    }
    let any_size = |element_type| TableType {
        element_type,
        table64: false,
        minimum: 0,
        maximum: None,
        shared: false,
    };
    imports.import(
        RESUME_MODULE,
        CHAIN_TABLE,
        EntityType::Table(any_size(RefType::FUNCREF)),
    );
    for &t in remap.tables.keys() {
        let element_type = RoundtripReencoder
            .ref_type(main.table_types[t as usize].element_type)
            .map_err(|e| ResumeError::Read(e.to_string()))?;
        imports.import(
            MAIN_MODULE,
            &format!("{TABLE_EXPORT}{t}"),
            EntityType::Table(any_size(element_type)),
        );
    }
    imports.import(
        MAIN_MODULE,
        "memory",
        EntityType::Memory(MemoryType {
            minimum: 0,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        }),
    );
    module.section(&imports);

    let mut fs = FunctionSection::new();
    fs.function(copy_ty);
    module.section(&fs);

    // Host functions the copy calls find the guest's memory and pause flag
    // through the calling instance's exports.
    let mut exports = ExportSection::new();
    exports.export(COPY_EXPORT, ExportKind::Func, remap.funcs.len() as u32);
    exports.export("memory", ExportKind::Memory, 0);
    if let Some(p) = main.pause_global {
        exports.export(PAUSE_EXPORT, ExportKind::Global, remap.globals[&p]);
    }
    module.section(&exports);

    let mut code = CodeSection::new();
    code.raw(&body);
    module.section(&code);
    Ok((module.finish(), import))
}

/// Where each construct of a function body ends (and an `if`'s `else`).
struct Shape {
    end: Vec<usize>,
    els: Vec<usize>,
}

fn shape(ops: &[Operator]) -> Result<Shape, ResumeError> {
    let mut end = vec![usize::MAX; ops.len()];
    let mut els = vec![usize::MAX; ops.len()];
    let mut open = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => open.push(i),
            Operator::Else => {
                let &c = open
                    .last()
                    .ok_or_else(|| ResumeError::Read("else outside an if".into()))?;
                els[c] = i;
            }
            Operator::End => {
                if let Some(c) = open.pop() {
                    end[c] = i;
                }
            }
            _ => {}
        }
    }
    Ok(Shape { end, els })
}

/// Writes code with the guest's indices mapped and branch depths moved to
/// the output's labels.
struct Emit<'r> {
    out: Vec<u8>,
    /// Output labels open (the function's own is level 0).
    level: u32,
    /// Per original label open (the function's first): its output level.
    labels: Vec<u32>,
    remap: &'r mut Remap,
}

impl Emit<'_> {
    fn put(&mut self, i: Instruction) {
        i.encode(&mut self.out);
    }

    /// Opens an output label standing for the next original one.
    fn open(&mut self, i: Instruction) {
        self.put(i);
        self.level += 1;
        self.labels.push(self.level);
    }

    /// Opens an output label of the copy's own.
    fn open_own(&mut self, i: Instruction) {
        self.put(i);
        self.level += 1;
    }

    fn close(&mut self) {
        self.put(Instruction::End);
        self.level -= 1;
        self.labels.pop();
    }

    fn close_own(&mut self) {
        self.put(Instruction::End);
        self.level -= 1;
    }

    fn depth(&self, relative: u32) -> Result<u32, ResumeError> {
        let i = self
            .labels
            .len()
            .checked_sub(1 + relative as usize)
            .ok_or_else(|| ResumeError::Read("branch depth out of range".into()))?;
        Ok(self.level - self.labels[i])
    }

    /// Copies balanced code.
    fn copy(&mut self, ops: &[Operator]) -> Result<(), ResumeError> {
        for op in ops {
            match op {
                Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => {
                    let i = self.remap.instruction(op.clone())?;
                    self.open(i);
                }
                Operator::End => self.close(),
                Operator::Br { relative_depth } => {
                    let d = self.depth(*relative_depth)?;
                    self.put(Instruction::Br(d));
                }
                Operator::BrIf { relative_depth } => {
                    let d = self.depth(*relative_depth)?;
                    self.put(Instruction::BrIf(d));
                }
                Operator::BrTable { targets } => {
                    let mut mapped = Vec::with_capacity(targets.len() as usize);
                    for t in targets.targets() {
                        mapped.push(self.depth(t?)?);
                    }
                    let default = self.depth(targets.default())?;
                    self.put(Instruction::BrTable(mapped.into(), default));
                }
                other => {
                    let i = self.remap.instruction(other.clone())?;
                    self.put(i);
                }
            }
        }
        Ok(())
    }
}

/// The continuation copy of one frame's function, entered at its site:
/// the body (locals and code) without its size prefix, and whether its site
/// calls an import.
fn copy(
    main: &Main,
    state: u32,
    remap: &mut Remap,
    types: &mut Types,
    fr: StackFrame,
) -> Result<(Vec<u8>, bool), ResumeError> {
    let body = &main.bodies[&fr.func];
    let ft = &main.types[main.func_types[fr.func as usize] as usize];
    let mut local_types: Vec<ValType> = ft.params().to_vec();
    let mut decls: Vec<(u32, ValType)> = Vec::new();
    for p in ft.params() {
        decls.push((1, *p));
    }
    let mut locals = body.get_locals_reader()?;
    for _ in 0..locals.get_count() {
        let (count, t) = locals.read()?;
        decls.push((count, t));
        local_types.extend(std::iter::repeat_n(t, count as usize));
    }
    // Every local but the frame pointer (the last) is in the frame.
    let ptr = local_types
        .len()
        .checked_sub(1)
        .ok_or_else(|| ResumeError::Mismatch(format!("function {} has no frame", fr.func)))?
        as u32;
    let saved = &local_types[..ptr as usize];
    let (offsets, size) = frame_layout(saved);

    let mut ops = Vec::new();
    let mut reader = body.get_operators_reader()?;
    while !reader.eof() {
        ops.push(reader.read()?);
    }
    // The site: `call; i32.const site; global.get $state; br_if; drop`,
    // or a migration point, `i32.const site; global.get $skip; i32.eqz;
    // br_if; drop; global.get $skip; i32.const 1; i32.sub; global.set
    // $skip` (entered after it, see `crate::unwind`).
    let is_site = |i: usize| {
        matches!(ops[i], Operator::I32Const { value } if value as u32 == fr.site)
            && matches!(ops[i + 1], Operator::GlobalGet { global_index } if global_index == state)
            && matches!(ops[i + 2], Operator::BrIf { .. })
            && matches!(
                ops[i - 1],
                Operator::Call { .. } | Operator::CallIndirect { .. }
            )
    };
    let is_point = |i: usize| {
        main.pause_global.is_some()
            && main.yield_func.is_some()
            && i + 8 < ops.len()
            && matches!(ops[i], Operator::I32Const { value } if value as u32 == fr.site)
            && matches!(ops[i + 1], Operator::GlobalGet { global_index } if Some(global_index) == main.pause_global)
            && matches!(ops[i + 2], Operator::I32Eqz)
            && matches!(ops[i + 3], Operator::BrIf { .. })
            && matches!(ops[i + 4], Operator::Drop)
            && matches!(ops[i + 8], Operator::GlobalSet { global_index } if Some(global_index) == main.pause_global)
    };
    let (at, point) = (1..ops.len().saturating_sub(2))
        .find_map(|i| {
            if is_site(i) {
                Some((i - 1, false))
            } else if is_point(i) {
                Some((i + 8, true))
            } else {
                None
            }
        })
        .ok_or_else(|| {
            ResumeError::Mismatch(format!("function {} has no site {}", fr.func, fr.site))
        })?;
    let sh = shape(&ops)?;
    let mut enclosing = Vec::new();
    for (i, op) in ops[..at].iter().enumerate() {
        match op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => {
                enclosing.push(i)
            }
            Operator::End => {
                enclosing.pop();
            }
            _ => {}
        }
    }

    let mut e = Emit {
        out: Vec::new(),
        level: 0,
        labels: vec![0],
        remap,
    };
    // Locals: the parameters become locals, at the same indices.
    (decls.len() as u32).encode(&mut e.out);
    for (count, t) in &decls {
        count.encode(&mut e.out);
        enc(*t)?.encode(&mut e.out);
    }
    // Take the frame off the buffer, check it is this copy's, load it.
    use Instruction as I;
    let buf = BUFFER;
    for i in [
        I::GlobalGet(buf),
        I::GlobalGet(buf),
        I::I32Load(crate::unwind::mem(0)),
        I::I32Const(size as i32),
        I::I32Sub,
        I::LocalTee(ptr),
        I::I32Store(crate::unwind::mem(0)),
        I::LocalGet(ptr),
        I::I32Load(crate::unwind::mem(0)),
        I::I32Const(fr.site as i32),
        I::I32Ne,
        I::LocalGet(ptr),
        I::I32Load(crate::unwind::mem(4)),
        I::I32Const(fr.func as i32),
        I::I32Ne,
        I::I32Or,
        I::LocalGet(ptr),
        I::I32Load(crate::unwind::mem(8)),
        I::I32Const(size as i32),
        I::I32Ne,
        I::I32Or,
        I::If(BlockType::Empty),
        I::Unreachable,
        I::End,
    ] {
        e.put(i);
    }
    for (l, (&t, &off)) in saved.iter().zip(&offsets).enumerate() {
        e.put(I::LocalGet(ptr));
        e.put(load(t, off));
        e.put(I::LocalSet(l as u32));
    }

    // Open the way in: one block per enclosing block or if (its end), two
    // per loop (after it; and back to its header).
    for &c in &enclosing {
        match ops[c] {
            Operator::Block { blockty } | Operator::If { blockty } => {
                let bt = block_results(main, types, blockty)?;
                e.open(I::Block(bt));
            }
            Operator::Loop { blockty } => {
                let after = block_results(main, types, blockty)?;
                e.open_own(I::Block(after));
                let again = block_params(main, types, blockty)?;
                e.open(I::Block(again));
            }
            _ => unreachable!("only constructs are enclosing"),
        }
    }
    // The call at the site.
    let import = point
        || matches!(ops[at], Operator::Call { function_index } if function_index < main.imported_funcs);
    match ops[at] {
        _ if point => {
            let function_index = main.yield_func.expect("checked by is_point");
            e.copy(&[Operator::Call { function_index }])?;
        }
        Operator::Call { function_index } if function_index < main.imported_funcs => {
            // Made again, with the arguments the transform kept in locals.
            let callee = &main.types[main.func_types[function_index as usize] as usize];
            let n = callee.params().len();
            let args = at.checked_sub(n).filter(|&s| {
                ops[s..at]
                    .iter()
                    .all(|op| matches!(op, Operator::LocalGet { .. }))
            });
            let Some(s) = args else {
                return Err(ResumeError::Mismatch(format!(
                    "the import call at site {} of function {} does not take its arguments from locals",
                    fr.site, fr.func
                )));
            };
            e.copy(&ops[s..=at])?;
        }
        ref call => {
            let ty = match call {
                Operator::Call { function_index } => main.func_types[*function_index as usize],
                Operator::CallIndirect { type_index, .. } => *type_index,
                _ => unreachable!("sites are calls"),
            };
            let r = types.results_of(&main.types[ty as usize])?;
            let ty = types.get(Vec::new(), r);
            for i in [
                I::GlobalGet(DEPTH),
                I::I32Const(1),
                I::I32Add,
                I::GlobalSet(DEPTH),
                I::GlobalGet(DEPTH),
                I::CallIndirect {
                    type_index: ty,
                    table_index: CHAIN,
                },
            ] {
                e.put(i);
            }
        }
    }
    // Then the rest of each construct, innermost first.
    let mut pos = at + 1;
    for &c in enclosing.iter().rev() {
        let in_then = sh.els[c] != usize::MAX && at < sh.els[c];
        let arm_end = if in_then { sh.els[c] } else { sh.end[c] };
        e.copy(&ops[pos..arm_end])?;
        match ops[c] {
            Operator::Loop { .. } => {
                // Falling off the body leaves the loop; a branch back to its
                // header reached the end of `again`: run the loop itself.
                e.put(I::Br(1));
                e.close();
                e.copy(&ops[c..=sh.end[c]])?;
                e.close_own();
            }
            _ => e.close(),
        }
        pos = sh.end[c] + 1;
    }
    // After the outermost block (`$unwind`): the frame save, and the end.
    let last = ops.len() - 1;
    e.copy(&ops[pos..last])?;
    e.put(I::End);
    Ok((e.out, import))
}

/// Block type giving a construct's results from nothing.
fn block_results(
    main: &Main,
    types: &mut Types,
    bt: wasmparser::BlockType,
) -> Result<BlockType, ResumeError> {
    match bt {
        wasmparser::BlockType::Empty => Ok(BlockType::Empty),
        wasmparser::BlockType::Type(t) => Ok(BlockType::Result(enc(t)?)),
        wasmparser::BlockType::FuncType(i) => {
            let r = main.types[i as usize].results().to_vec();
            types.producing(&r)
        }
    }
}

/// Block type giving a loop's parameters from nothing.
fn block_params(
    main: &Main,
    types: &mut Types,
    bt: wasmparser::BlockType,
) -> Result<BlockType, ResumeError> {
    match bt {
        wasmparser::BlockType::FuncType(i) => {
            let p = main.types[i as usize].params().to_vec();
            types.producing(&p)
        }
        _ => Ok(BlockType::Empty),
    }
}
