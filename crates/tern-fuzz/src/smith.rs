//! Valid WASI command modules from `wasm-smith`, so that the boot path's
//! transform sees real code and not only what validation refuses.

use arbitrary::Unstructured;
use wasm_encoder::reencode::{Error, Reencode};

/// A module exporting `_start` and `memory` and importing nothing: the
/// shape `tern_prepare::check::check_command` accepts.
pub(crate) fn command_module(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let config = wasm_smith::Config {
        exports: Some(required_exports()),
        max_imports: 0,
        allow_start_export: false,
        min_funcs: 1,
        max_funcs: 8,
        max_instructions: 100,
        // The exported memory is the only one.
        max_memories: 0,
        max_tables: 1,
        memory_max_size_required: true,
        bulk_memory_enabled: true,
        // wasm-smith 0.254 writes reference types in forms only the GC
        // proposal accepts.
        reference_types_enabled: false,
        memory64_enabled: false,
        multi_value_enabled: true,
        saturating_float_to_int_enabled: true,
        sign_extension_ops_enabled: true,
        simd_enabled: true,
        relaxed_simd_enabled: false,
        exceptions_enabled: false,
        gc_enabled: false,
        tail_call_enabled: false,
        threads_enabled: false,
        extended_const_enabled: false,
        custom_page_sizes_enabled: false,
        wide_arithmetic_enabled: false,
        ..wasm_smith::Config::default()
    };
    let module = wasm_smith::Module::new(config, u)?;
    plain_types(&module.to_bytes()).ok_or(arbitrary::Error::IncorrectFormat)
}

/// `(module (func (export "_start")) (memory (export "memory") 1))`.
pub(crate) fn required_exports() -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ExportKind, ExportSection, Function, FunctionSection, MemorySection,
        MemoryType, Module, TypeSection,
    };
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 0);
    exports.export("memory", ExportKind::Memory, 0);
    let mut code = CodeSection::new();
    let mut body = Function::new([]);
    body.instructions().end();
    code.function(&body);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&funcs)
        .section(&memories)
        .section(&exports)
        .section(&code);
    module.finish()
}

/// wasm-smith 0.254 puts every type in an explicit recursion group, which
/// only the GC proposal allows; a group of one final function type is the
/// plain function type, so re-encode each that way.
fn plain_types(wasm: &[u8]) -> Option<Vec<u8>> {
    struct Plain;
    impl Reencode for Plain {
        type Error = ();
        fn parse_type_section(
            &mut self,
            types: &mut wasm_encoder::TypeSection,
            section: wasmparser::TypeSectionReader<'_>,
        ) -> Result<(), Error<()>> {
            for group in section {
                for sub in group?.into_types() {
                    let wasmparser::CompositeInnerType::Func(f) = &sub.composite_type.inner else {
                        return Err(Error::UserError(()));
                    };
                    let params = f
                        .params()
                        .iter()
                        .map(|t| self.val_type(*t))
                        .collect::<Result<Vec<_>, _>>()?;
                    let results = f
                        .results()
                        .iter()
                        .map(|t| self.val_type(*t))
                        .collect::<Result<Vec<_>, _>>()?;
                    types.ty().function(params, results);
                }
            }
            Ok(())
        }
    }
    let mut module = wasm_encoder::Module::new();
    Plain
        .parse_core_module(&mut module, wasmparser::Parser::new(0), wasm)
        .ok()?;
    Some(module.finish())
}

/// `_start` calls a function that loops, so the prepared module has a
/// call site and a migration point to stop at.
pub(crate) fn looping_command() -> Vec<u8> {
    use wasm_encoder::{
        BlockType, CodeSection, ExportKind, ExportSection, Function, FunctionSection,
        MemorySection, MemoryType, Module, TypeSection, ValType,
    };
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    funcs.function(0);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 0);
    exports.export("memory", ExportKind::Memory, 0);
    let mut code = CodeSection::new();
    let mut start = Function::new([]);
    start.instructions().call(1).end();
    code.function(&start);
    // (local i32) loop: memory[0] += 1; br_if 0 (local.tee 0 (local + 1)) < 100
    let mut looping = Function::new([(1, ValType::I32)]);
    looping
        .instructions()
        .loop_(BlockType::Empty)
        .local_get(0)
        .i32_const(1)
        .i32_add()
        .local_tee(0)
        .i32_const(100)
        .i32_lt_u()
        .br_if(0)
        .end()
        .end();
    code.function(&looping);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&funcs)
        .section(&memories)
        .section(&exports)
        .section(&code);
    module.finish()
}
