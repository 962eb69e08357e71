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

/// The shape that made real interpreters slow (issue 10): one hot dispatch
/// loop with many call sites that can unwind. The prepared loop must hold
/// nothing for rewinding: the pause state is read once per site (after the
/// call) and nowhere else, and the only `br_table` is the program's own.
/// Each site then costs its check and nothing on the path into it, so the
/// growth of the function is bounded per site.
#[test]
fn dispatch_loop_holds_no_rewind_code() {
    const OPS: usize = 64;
    let mut src = String::from(
        r#"(module (memory (export "memory") 1)
             (global $acc (mut i32) (i32.const 1))"#,
    );
    for k in 0..OPS {
        // Each handler has a loop, so it can reach a migration point.
        src.push_str(&format!(
            r#"(func $op{k} (param i32) (result i32) (local i32)
                 (loop $l
                   (local.set 0 (i32.add (i32.mul (local.get 0) (i32.const {m})) (i32.load (i32.and (local.get 0) (i32.const 1020)))))
                   (local.set 1 (i32.add (local.get 1) (i32.const 1)))
                   (br_if $l (i32.lt_u (local.get 1) (i32.const 3))))
                 (local.get 0))"#,
            m = 2 * k + 1
        ));
    }
    src.push_str(r#"(func $run (param $n i32) (local $pc i32) (local $acc i32) (loop $top"#);
    for _ in 0..OPS {
        src.push_str("(block ");
    }
    src.push_str("(br_table ");
    for k in 0..OPS {
        src.push_str(&format!("{k} "));
    }
    src.push_str("0 (i32.and (i32.load8_u (local.get $pc)) (i32.const 63)))");
    for k in 0..OPS {
        src.push_str(&format!(
            ") (local.set $acc (i32.add (call $op{k} (local.get $acc)) (local.get $pc))) (br 1)"
        ));
        if k == OPS - 1 {
            src.push(' ');
        }
    }
    // The last `br 1` above leaves the loop; count steps instead.
    src.truncate(src.len() - "(br 1) ".len());
    src.push_str(
        r#"(local.set $pc (i32.add (local.get $pc) (i32.const 1)))
           (br_if $top (i32.lt_u (local.get $pc) (local.get $n))))
           (global.set $acc (local.get $acc)))
           (func (export "_start") (call $run (i32.const 1000))))"#,
    );
    let w = wasm(&src);
    let p = prepare(&w, &Options::default()).unwrap();

    // The pause state is the second-to-last global.
    let mut globals = 0u32;
    let mut run = None;
    let mut defined = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(&p.module) {
        match payload.unwrap() {
            wasmparser::Payload::GlobalSection(r) => globals += r.count(),
            wasmparser::Payload::CodeSectionEntry(b) => {
                if defined == OPS {
                    run = Some(b);
                }
                defined += 1;
            }
            _ => {}
        }
    }
    let state = globals - 2;
    let run = run.expect("the dispatch function");
    let (mut state_reads, mut tables, mut calls) = (0, 0, 0);
    for op in run.get_operators_reader().unwrap() {
        match op.unwrap() {
            wasmparser::Operator::GlobalGet { global_index } if global_index == state => {
                state_reads += 1
            }
            wasmparser::Operator::BrTable { .. } => tables += 1,
            wasmparser::Operator::Call { .. } => calls += 1,
            _ => {}
        }
    }
    // Every handler call is a site. The loop's migration point reads the
    // pause flag instead, and calls nothing on the loop's path.
    assert_eq!(state_reads, OPS, "state read outside the site checks");
    assert_eq!(tables, 1, "a rewind dispatch table was added");
    let original = {
        let mut defined = 0usize;
        let mut len = 0;
        for payload in wasmparser::Parser::new(0).parse_all(&w) {
            if let wasmparser::Payload::CodeSectionEntry(b) = payload.unwrap() {
                if defined == OPS {
                    len = b.as_bytes().len();
                }
                defined += 1;
            }
        }
        len
    };
    let grown = run.as_bytes().len() - original;
    // Per site: `i32.const id; global.get; br_if; drop` is at most 10
    // bytes; the point is 20 at most; the frame save is a fixed cost of the
    // function.
    assert!(
        grown <= OPS * 10 + 20 + 120,
        "the dispatch function grew by {grown} bytes for {} sites ({calls} calls)",
        OPS + 1
    );
}
