//! Prepare: validation errors, migration points, exports.

use tern_prepare::check::CheckError;
use tern_prepare::{points, prepare, Options, PrepareError};

const COMMAND: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (global $sp (mut i32) (i32.const 1024))
  (global $k i32 (i32.const 7))
  (func $work (param i32) (result i32)
    (local i32)
    (loop $l
      (local.set 1 (i32.add (local.get 1) (local.get 0)))
      (br_if $l (i32.lt_u (local.get 1) (i32.const 100))))
    (local.get 1))
  (table 1 funcref)
  (elem (i32.const 0) $work)
  (func (export "_start")
    (drop (call $work (i32.const 3)))
    (drop (call_indirect (param i32) (result i32) (i32.const 5) (i32.const 0)))
    (drop (call $rec (i32.const 4)))
    (call $exit (i32.const 0)))
  (func $rec (param i32) (result i32)
    (if (result i32) (local.get 0)
      (then (call $rec (i32.sub (local.get 0) (i32.const 1))))
      (else (i32.const 0)))))
"#;

fn wasm(src: &str) -> Vec<u8> {
    wat::parse_str(src).expect("test module parses")
}

fn exports(wasm: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for p in wasmparser::Parser::new(0).parse_all(wasm) {
        if let Ok(wasmparser::Payload::ExportSection(r)) = p {
            out.extend(r.into_iter().flatten().map(|e| e.name.to_string()));
        }
    }
    out
}

#[test]
fn points_insert_checks_and_exports() {
    let w = wasm(COMMAND);
    let info = tern_prepare::check::check_command(&w).unwrap();
    let out = points::insert(&w, &info).unwrap();
    wasmparser::Validator::new().validate_all(&out).unwrap();
    let ex = exports(&out);
    assert!(ex.contains(&"tern_pause".to_string()));
    assert!(ex.contains(&"tern_g0".to_string()), "{ex:?}");
    assert!(
        !ex.contains(&"tern_g1".to_string()),
        "immutable globals are not exported"
    );
    let text = wasmprinter_like(&out);
    // The loop header and the entry of the one function that can recurse;
    // `_start` and `$work` (no cycle through them) get no entry check.
    assert_eq!(
        text.matches("call 1 ").count() + text.matches("call 1\n").count(),
        2,
        "{text}"
    );
}

/// Counts calls to the yield import (function 1) by walking operators.
fn wasmprinter_like(wasm: &[u8]) -> String {
    let mut s = String::new();
    for p in wasmparser::Parser::new(0).parse_all(wasm) {
        if let Ok(wasmparser::Payload::CodeSectionEntry(body)) = p {
            let mut r = body.get_operators_reader().unwrap();
            while !r.eof() {
                if let wasmparser::Operator::Call { function_index } = r.read().unwrap() {
                    s.push_str(&format!("call {function_index}\n"));
                }
            }
        }
    }
    s
}

fn asyncify() -> Options {
    Options {
        transform: tern_prepare::Transform::BinaryenAsyncify,
        ..Options::default()
    }
}

#[test]
fn prepare_runs_tern_transform_by_default() {
    let w = wasm(COMMAND);
    let p = prepare(&w, &Options::default()).unwrap();
    let ex = exports(&p.module);
    for needed in [
        "asyncify_start_unwind",
        "asyncify_stop_unwind",
        "asyncify_start_rewind",
        "asyncify_stop_rewind",
        "asyncify_get_state",
        "tern_pause",
        "_start",
    ] {
        assert!(ex.iter().any(|e| e == needed), "missing {needed}: {ex:?}");
    }
    assert_eq!(p.transform.name, "tern-unwind");
    assert_ne!(p.original_digest, p.prepared_digest);
}

#[test]
fn functions_that_cannot_pause_are_copied_unchanged() {
    // $leaf has no loop and calls nothing: it can never be on the stack at
    // a migration point, so its body must come out byte for byte.
    let w = wasm(
        r#"(module (memory (export "memory") 1)
             (func $leaf (param i32) (result i32) local.get 0 i32.const 3 i32.mul)
             (func (export "_start") (local i32)
               loop i32.const 1 call $leaf local.set 0 local.get 0 br_if 0 end))"#,
    );
    let p = prepare(&w, &Options::default()).unwrap();
    let bodies = |m: &[u8]| -> Vec<Vec<u8>> {
        wasmparser::Parser::new(0)
            .parse_all(m)
            .filter_map(|p| match p.unwrap() {
                wasmparser::Payload::CodeSectionEntry(b) => Some(b.as_bytes().to_vec()),
                _ => None,
            })
            .collect()
    };
    let (before, after) = (bodies(&w), bodies(&p.module));
    assert_eq!(before[0], after[0], "the leaf function was rewritten");
    assert!(
        after[1].len() > before[1].len(),
        "the looping function was not"
    );
}

#[test]
fn prepare_runs_asyncify() {
    let w = wasm(COMMAND);
    match prepare(&w, &asyncify()) {
        Ok(p) => {
            let ex = exports(&p.module);
            for needed in [
                "asyncify_start_unwind",
                "asyncify_start_rewind",
                "tern_pause",
                "_start",
            ] {
                assert!(ex.iter().any(|e| e == needed), "missing {needed}: {ex:?}");
            }
            assert_eq!(p.transform.name, "binaryen-asyncify");
            assert_ne!(p.original_digest, p.prepared_digest);
        }
        Err(PrepareError::Asyncify(tern_prepare::asyncify::AsyncifyError::Missing(_))) => {
            eprintln!("wasm-opt not installed; skipped");
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn rejects_bad_modules() {
    let cases: &[(&[u8], &str)] = &[
        (b"hello", "not a WebAssembly module"),
        (b"\0asm\x01\0\0\0\x05", "invalid WebAssembly"),
    ];
    for (bytes, msg) in cases {
        let e = prepare(bytes, &Options::default()).unwrap_err().to_string();
        assert!(e.contains(msg), "{e}");
    }
    let no_start = wasm(r#"(module (memory (export "memory") 1))"#);
    assert!(matches!(
        prepare(&no_start, &Options::default()),
        Err(PrepareError::Check(CheckError::NoStart))
    ));
    let foreign = wasm(
        r#"(module (import "env" "f" (func)) (memory (export "memory") 1) (func (export "_start")))"#,
    );
    let e = prepare(&foreign, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("env.f"), "{e}");
    let asyncified = wasm(
        r#"(module (memory (export "memory") 1) (func (export "_start")) (func (export "asyncify_start_unwind")))"#,
    );
    let e = prepare(&asyncified, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("already asyncified"), "{e}");
    // Valid, but beyond binaryen 108: refused up front, in one line, when
    // Asyncify is asked for; Tern's transform prepares them.
    for (body, what) in [
        ("(elem.drop 0)", "`elem.drop`"),
        (
            "i32.const 1 loop (param i32) (result i32) end drop",
            "multi-value",
        ),
    ] {
        let m = wasm(&format!(
            r#"(module (memory (export "memory") 1) (table 1 funcref) (elem func $s)
                 (func $s (export "_start") {body}))"#
        ));
        let e = prepare(&m, &asyncify()).unwrap_err().to_string();
        assert!(e.contains(what) && e.contains("cannot handle"), "{e}");
        prepare(&m, &Options::default()).unwrap();
    }
}

#[test]
fn rejects_already_prepared() {
    let w = wasm(COMMAND);
    let Ok(p) = prepare(&w, &Options::default()) else {
        return;
    };
    let e = prepare(&p.module, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("already"), "{e}");
}
