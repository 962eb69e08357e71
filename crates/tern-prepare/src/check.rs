//! Validation: is this a module Tern can make migratable?

use wasmparser::{ExternalKind, Parser, Payload, TypeRef, Validator, WasmFeatures};

use crate::{PAUSE_EXPORT, WASI_MODULE};

/// Why a module cannot be made migratable.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly module (bad magic number)")]
    NotWasm,
    /// A component rather than a core module.
    #[error("a WebAssembly component, not a wasm32-wasi preview1 command module")]
    Component,
    /// Invalid WebAssembly.
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    /// It imports something other than WASI preview1.
    #[error(
        "imports {0}, which is not WASI preview1: Tern runs wasm32-wasi preview1 commands only"
    )]
    ForeignImport(String),
    /// It does not export `_start`.
    #[error(
        "not a WASI command: it does not export a `_start` function taking and returning nothing"
    )]
    NoStart,
    /// It does not export one 32-bit memory named `memory`.
    #[error("not a WASI command: {0}")]
    Memory(String),
    /// Asyncify was already run on it.
    #[error("already asyncified (it has `{0}`): give Tern the original module")]
    AlreadyAsyncified(String),
    /// Tern already prepared it.
    #[error("already prepared by Tern: give Tern the original module")]
    AlreadyPrepared,
    /// Valid, but uses something binaryen 108's Asyncify cannot handle.
    #[error("uses {0}, which binaryen 108's Asyncify cannot handle (Tern's own transform can)")]
    Unsupported(&'static str),
}

/// Facts about a module gathered while checking it.
#[derive(Debug, Clone, Default)]
pub struct ModuleInfo {
    /// Number of imported functions.
    pub imported_funcs: u32,
    /// Number of imported globals.
    pub imported_globals: u32,
    /// Number of types in the type section.
    pub types: u32,
    /// Value types and mutability of the module's own globals, in order.
    pub defined_globals: Vec<(wasmparser::ValType, bool)>,
    /// Whether the module has an import / global / export section.
    pub has_imports: bool,
    /// See `has_imports`.
    pub has_globals: bool,
    /// See `has_imports`.
    pub has_exports: bool,
}

pub(crate) fn features() -> WasmFeatures {
    // What wasmtime runs by default and binaryen 108 understands.
    WasmFeatures::MUTABLE_GLOBAL
        | WasmFeatures::SATURATING_FLOAT_TO_INT
        | WasmFeatures::SIGN_EXTENSION
        | WasmFeatures::REFERENCE_TYPES
        | WasmFeatures::MULTI_VALUE
        | WasmFeatures::BULK_MEMORY
        | WasmFeatures::SIMD
        | WasmFeatures::FLOATS
}

fn validate(wasm: &[u8]) -> Result<(), CheckError> {
    if wasm.len() < 8 || &wasm[0..4] != b"\0asm" {
        return Err(CheckError::NotWasm);
    }
    if wasm[4..8] != [1, 0, 0, 0] {
        return Err(CheckError::Component);
    }
    Validator::new_with_features(features())
        .validate_all(wasm)
        .map(|_| ())
        .map_err(|e| CheckError::Invalid(e.to_string()))
}

/// Checks that `wasm` is a valid preview1 command that Tern has not prepared.
pub fn check_command(wasm: &[u8]) -> Result<ModuleInfo, CheckError> {
    validate(wasm)?;
    let mut info = ModuleInfo::default();
    let mut func_types: Vec<u32> = Vec::new();
    let mut empty_types: Vec<bool> = Vec::new();
    let mut start_ok = false;
    let mut memory_export = false;
    let mut memories: Vec<wasmparser::MemoryType> = Vec::new();
    let invalid = |e: wasmparser::BinaryReaderError| CheckError::Invalid(e.to_string());
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            Payload::TypeSection(reader) => {
                for ty in reader.into_iter_err_on_gc_types() {
                    let ty = ty.map_err(invalid)?;
                    empty_types.push(ty.params().is_empty() && ty.results().is_empty());
                    info.types += 1;
                }
            }
            Payload::ImportSection(reader) => {
                info.has_imports = true;
                for import in reader.into_imports() {
                    let import = import.map_err(invalid)?;
                    if import.module == "asyncify" {
                        return Err(CheckError::AlreadyAsyncified(format!(
                            "import asyncify.{}",
                            import.name
                        )));
                    }
                    if import.module == crate::YIELD_IMPORT.0 {
                        return Err(CheckError::AlreadyPrepared);
                    }
                    if import.module != WASI_MODULE {
                        return Err(CheckError::ForeignImport(format!(
                            "{}.{}",
                            import.module, import.name
                        )));
                    }
                    match import.ty {
                        TypeRef::Func(t) => {
                            info.imported_funcs += 1;
                            func_types.push(t);
                        }
                        TypeRef::Global(_) => info.imported_globals += 1,
                        TypeRef::Memory(m) => memories.push(m),
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for t in reader {
                    func_types.push(t.map_err(invalid)?);
                }
            }
            Payload::MemorySection(reader) => {
                for m in reader {
                    memories.push(m.map_err(invalid)?);
                }
            }
            Payload::GlobalSection(reader) => {
                info.has_globals = true;
                for g in reader {
                    let g = g.map_err(invalid)?;
                    info.defined_globals.push((g.ty.content_type, g.ty.mutable));
                }
            }
            Payload::ExportSection(reader) => {
                info.has_exports = true;
                for export in reader {
                    let export = export.map_err(invalid)?;
                    if export.name == PAUSE_EXPORT {
                        return Err(CheckError::AlreadyPrepared);
                    }
                    if export.name.starts_with("asyncify_") {
                        return Err(CheckError::AlreadyAsyncified(format!(
                            "export {}",
                            export.name
                        )));
                    }
                    match (export.name, export.kind) {
                        ("_start", ExternalKind::Func) => {
                            let ok = func_types
                                .get(export.index as usize)
                                .and_then(|t| empty_types.get(*t as usize))
                                .copied()
                                .unwrap_or(false);
                            start_ok = ok;
                        }
                        ("memory", ExternalKind::Memory) => memory_export = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if !start_ok {
        return Err(CheckError::NoStart);
    }
    if memories.len() != 1 || !memory_export {
        return Err(CheckError::Memory(
            "it must have exactly one memory, exported as `memory`".into(),
        ));
    }
    if memories[0].memory64 || memories[0].shared {
        return Err(CheckError::Memory(
            "64-bit and shared memories are not supported".into(),
        ));
    }
    Ok(info)
}

/// Refuses what binaryen 108's Asyncify cannot handle (`elem.drop`, loops
/// with a multi-value block type), before running it.
pub fn asyncify_limits(wasm: &[u8]) -> Result<(), CheckError> {
    let invalid = |e: wasmparser::BinaryReaderError| CheckError::Invalid(e.to_string());
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::CodeSectionEntry(body) = payload.map_err(invalid)? {
            for op in body.get_operators_reader().map_err(invalid)? {
                match op.map_err(invalid)? {
                    wasmparser::Operator::ElemDrop { .. } => {
                        return Err(CheckError::Unsupported("`elem.drop`"));
                    }
                    wasmparser::Operator::Loop {
                        blockty: wasmparser::BlockType::FuncType(_),
                    } => {
                        return Err(CheckError::Unsupported(
                            "a loop with a multi-value block type",
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Checks the output of a transform: valid, with everything capture needs.
pub fn check_prepared(wasm: &[u8]) -> Result<(), CheckError> {
    validate(wasm)?;
    let mut needed = vec![
        PAUSE_EXPORT,
        "asyncify_start_unwind",
        "asyncify_stop_unwind",
        "asyncify_start_rewind",
        "asyncify_stop_rewind",
        "asyncify_get_state",
        "_start",
        "memory",
    ];
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::ExportSection(reader) =
            payload.map_err(|e| CheckError::Invalid(e.to_string()))?
        {
            for export in reader.into_iter().flatten() {
                needed.retain(|n| *n != export.name);
            }
        }
    }
    match needed.first() {
        None => Ok(()),
        Some(missing) => Err(CheckError::Invalid(format!("missing export `{missing}`"))),
    }
}
