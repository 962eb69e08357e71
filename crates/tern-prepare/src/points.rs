//! Migration points: a cheap pause-flag check at every loop header and
//! recursive function's entry, plus the exports capture needs.
//!
//! For a module with `F` imported functions, `G` globals and `T` types the
//! rewrite:
//!
//! - appends type `T`: `(func)`,
//! - appends the import `tern.yield` of type `T` as function `F` (every
//!   defined function index shifts up by one),
//! - appends global `G`: `(mut i32) = 0`, exported as `tern_pause`: with
//!   Tern's transform, how many points to pass before stopping (0 but in
//!   tests, see `crate::unwind`),
//! - exports every mutable global `i` as `tern_g<i>`,
//! - inserts `i32.const PAUSE_FLAG_INDEX; i32.load offset=PAUSE_FLAG_OFFSET;
//!   if; call F; end` (the pause flag, see [`crate::PAUSE_FLAG_INDEX`])
//!   right after every `loop` and at
//!   the entry of every function that can recurse
//!   ([`crate::callgraph::recursive_functions`]): other functions finish, or
//!   reach a loop or a recursive call, in time bounded by the module's size,
//!   so the guest still reaches a point in bounded time from any instant,
//!   and functions that can reach none need no unwinding code at all,
//! - drops the `name` section (its function indices would be stale).

use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{
    CodeSection, ConstExpr, EntityType, ExportKind, ExportSection, GlobalSection, GlobalType,
    ImportSection, Instruction, Module, SectionId, TypeSection, ValType,
};
use wasmparser::{FunctionBody, Operator};

use crate::check::ModuleInfo;
use crate::{
    GLOBAL_EXPORT_PREFIX, PAUSE_EXPORT, PAUSE_FLAG_INDEX, PAUSE_FLAG_OFFSET, YIELD_IMPORT,
};

struct Points<'a> {
    info: &'a ModuleInfo,
    /// Per defined function: gets an entry check.
    entry_check: Vec<bool>,
    /// Defined functions rewritten so far.
    next_func: usize,
    yield_func: u32,
    yield_type: u32,
    pause_global: u32,
    imports_done: bool,
    globals_done: bool,
    exports_done: bool,
}

impl Points<'_> {
    fn add_yield_import(&mut self, imports: &mut ImportSection) {
        imports.import(
            YIELD_IMPORT.0,
            YIELD_IMPORT.1,
            EntityType::Function(self.yield_type),
        );
        self.imports_done = true;
    }

    fn add_pause_global(&mut self, globals: &mut GlobalSection) {
        globals.global(
            GlobalType {
                val_type: ValType::I32,
                mutable: true,
                shared: false,
            },
            &ConstExpr::i32_const(0),
        );
        self.globals_done = true;
    }

    fn add_exports(&mut self, exports: &mut ExportSection) {
        exports.export(PAUSE_EXPORT, ExportKind::Global, self.pause_global);
        for (i, (_, mutable)) in self.info.defined_globals.iter().enumerate() {
            if *mutable {
                let index = self.info.imported_globals + i as u32;
                exports.export(
                    &format!("{GLOBAL_EXPORT_PREFIX}{index}"),
                    ExportKind::Global,
                    index,
                );
            }
        }
        self.exports_done = true;
    }

    fn check(&self, f: &mut wasm_encoder::Function) {
        f.instruction(&Instruction::I32Const(PAUSE_FLAG_INDEX));
        f.instruction(&Instruction::I32Load(wasm_encoder::MemArg {
            offset: u64::from(PAUSE_FLAG_OFFSET),
            align: 2,
            memory_index: 0,
        }));
        f.instruction(&Instruction::If(wasm_encoder::BlockType::Empty));
        f.instruction(&Instruction::Call(self.yield_func));
        f.instruction(&Instruction::End);
    }
}

impl Reencode for Points<'_> {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(if func >= self.info.imported_funcs {
            func + 1
        } else {
            func
        })
    }

    fn parse_type_section(
        &mut self,
        types: &mut TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_type_section(self, types, section)?;
        types.ty().function([], []);
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_import_section(self, imports, section)?;
        self.add_yield_import(imports);
        Ok(())
    }

    fn parse_global_section(
        &mut self,
        globals: &mut GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_global_section(self, globals, section)?;
        self.add_pause_global(globals);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_export_section(self, exports, section)?;
        self.add_exports(exports);
        Ok(())
    }

    fn parse_custom_section(
        &mut self,
        module: &mut Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        if section.name() == "name" {
            return Ok(());
        }
        reencode::utils::parse_custom_section(self, module, section)
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut Module,
        _after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        // Sections the module lacks are emitted at their place in the order.
        let order = |s: Option<SectionId>| s.map(|s| s as u8).unwrap_or(u8::MAX);
        let before = order(before);
        let past = |id: SectionId| before > id as u8 && before != SectionId::DataCount as u8;
        if !self.info.has_imports && !self.imports_done && past(SectionId::Import) {
            let mut imports = ImportSection::new();
            self.add_yield_import(&mut imports);
            module.section(&imports);
        }
        if !self.info.has_globals && !self.globals_done && past(SectionId::Global) {
            let mut globals = GlobalSection::new();
            self.add_pause_global(&mut globals);
            module.section(&globals);
        }
        if !self.info.has_exports && !self.exports_done && past(SectionId::Export) {
            let mut exports = ExportSection::new();
            self.add_exports(&mut exports);
            module.section(&exports);
        }
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut CodeSection,
        func: FunctionBody<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        let mut f = self.new_function_with_parsed_locals(&func)?;
        if self
            .entry_check
            .get(self.next_func)
            .copied()
            .unwrap_or(true)
        {
            self.check(&mut f);
        }
        self.next_func += 1;
        let mut reader = func.get_operators_reader()?;
        while !reader.eof() {
            let op = reader.read()?;
            let is_loop = matches!(op, Operator::Loop { .. });
            f.instruction(&self.instruction(op)?);
            if is_loop {
                self.check(&mut f);
            }
        }
        code.function(&f);
        Ok(())
    }
}

/// Inserts migration points into `wasm`, described by `info`
/// (from [`crate::check::check_command`]).
pub fn insert(wasm: &[u8], info: &ModuleInfo) -> Result<Vec<u8>, String> {
    if info.types == 0 {
        return Err("the module has no type section".into());
    }
    let entry_check = crate::callgraph::recursive_functions(wasm, info.imported_funcs)?;
    let mut points = Points {
        info,
        entry_check,
        next_func: 0,
        yield_func: info.imported_funcs,
        yield_type: info.types,
        pause_global: info.imported_globals + info.defined_globals.len() as u32,
        imports_done: false,
        globals_done: false,
        exports_done: false,
    };
    let mut module = Module::new();
    points
        .parse_core_module(&mut module, wasmparser::Parser::new(0), wasm)
        .map_err(|e| e.to_string())?;
    Ok(module.finish())
}
