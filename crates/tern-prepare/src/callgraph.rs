//! The call graph of a module's own functions, and which of them can recurse.
//!
//! A guest must reach a migration point in bounded time from any instant.
//! Loops get a point at their header. Straight-line code is bounded by its
//! size, and so is a chain of calls that never returns to a function already
//! on it. Only functions that can call themselves again, directly or through
//! others (a cycle of the call graph), need a point at their entry.
//!
//! Edges: `call f` gives an edge to `f`. An indirect call (`call_indirect`)
//! may reach any function whose address is taken (listed in an element
//! segment, or named by `ref.func`), so it gives an edge to each of them.
//! Imports never call back into the module (WASI), so they end paths.

use wasmparser::{ElementItems, Operator, Parser, Payload};

/// Which defined functions (index from 0 = first defined function) are on
/// a cycle of the call graph of `wasm`, a valid module with
/// `imported_funcs` imported functions.
pub fn recursive_functions(wasm: &[u8], imported_funcs: u32) -> Result<Vec<bool>, String> {
    let mut callees: Vec<Vec<u32>> = Vec::new();
    let mut indirect: Vec<bool> = Vec::new();
    let mut taken: Vec<u32> = Vec::new();
    let err = |e: wasmparser::BinaryReaderError| e.to_string();
    let own = |f: u32| f.checked_sub(imported_funcs);
    let note_ref = |op: &Operator, taken: &mut Vec<u32>| {
        if let Operator::RefFunc { function_index } = op {
            taken.extend(own(*function_index));
        }
    };
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(err)? {
            Payload::ElementSection(reader) => {
                for element in reader {
                    match element.map_err(err)?.items {
                        ElementItems::Functions(fs) => {
                            for f in fs {
                                taken.extend(own(f.map_err(err)?));
                            }
                        }
                        ElementItems::Expressions(_, exprs) => {
                            for e in exprs {
                                for op in e.map_err(err)?.get_operators_reader() {
                                    note_ref(&op.map_err(err)?, &mut taken);
                                }
                            }
                        }
                    }
                }
            }
            Payload::GlobalSection(reader) => {
                for g in reader {
                    for op in g.map_err(err)?.init_expr.get_operators_reader() {
                        note_ref(&op.map_err(err)?, &mut taken);
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut calls = Vec::new();
                let mut any_indirect = false;
                for op in body.get_operators_reader().map_err(err)? {
                    let op = op.map_err(err)?;
                    match op {
                        Operator::Call { function_index } => calls.extend(own(function_index)),
                        Operator::CallIndirect { .. } => any_indirect = true,
                        ref other => note_ref(other, &mut taken),
                    }
                }
                calls.sort_unstable();
                calls.dedup();
                callees.push(calls);
                indirect.push(any_indirect);
            }
            _ => {}
        }
    }
    taken.sort_unstable();
    taken.dedup();
    let n = callees.len();
    for (f, calls) in callees.iter_mut().enumerate() {
        if indirect[f] {
            calls.extend(&taken);
        }
        calls.retain(|&c| (c as usize) < n);
    }
    Ok(on_cycles(&callees))
}

/// For each node of the graph `edges`, whether it lies on a cycle (an SCC
/// of more than one node, or a node with an edge to itself). Tarjan's
/// algorithm, iterative (modules have tens of thousands of functions), in
/// time linear in nodes plus edges.
pub fn on_cycles(edges: &[Vec<u32>]) -> Vec<bool> {
    const UNSEEN: u32 = u32::MAX;
    let n = edges.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut result = vec![false; n];
    let mut next = 0u32;
    // (node, position of the next edge to follow)
    let mut work: Vec<(u32, usize)> = Vec::new();
    for root in 0..n as u32 {
        if index[root as usize] != UNSEEN {
            continue;
        }
        work.push((root, 0));
        while let Some(&(v, pos)) = work.last() {
            let vu = v as usize;
            if pos == 0 && index[vu] == UNSEEN {
                index[vu] = next;
                low[vu] = next;
                next += 1;
                stack.push(v);
                on_stack[vu] = true;
            }
            if let Some(&w) = edges[vu].get(pos) {
                if let Some(top) = work.last_mut() {
                    top.1 += 1;
                }
                let wu = w as usize;
                if index[wu] == UNSEEN {
                    work.push((w, 0));
                } else if on_stack[wu] {
                    low[vu] = low[vu].min(index[wu]);
                }
                continue;
            }
            // All edges of v followed.
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                let pu = parent as usize;
                low[pu] = low[pu].min(low[vu]);
            }
            if low[vu] == index[vu] {
                let mut members = Vec::new();
                loop {
                    let w = stack.pop().expect("v is on the stack");
                    on_stack[w as usize] = false;
                    members.push(w);
                    if w == v {
                        break;
                    }
                }
                let cyclic = members.len() > 1 || edges[vu].contains(&v);
                for w in members {
                    result[w as usize] = cyclic;
                }
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_self_loops_and_chains() {
        // 0 -> 1 -> 2 -> 0 (cycle), 3 -> 3 (self), 4 -> 5 (chain), 6 -> 0
        let g = vec![vec![1], vec![2], vec![0], vec![3], vec![5], vec![], vec![0]];
        assert_eq!(
            on_cycles(&g),
            vec![true, true, true, true, false, false, false]
        );
    }

    #[test]
    fn long_chains_do_not_overflow_the_stack() {
        let n = 200_000u32;
        let mut g: Vec<Vec<u32>> = (0..n).map(|i| vec![i + 1]).collect();
        g[(n - 1) as usize] = vec![];
        assert!(on_cycles(&g).iter().all(|c| !c));
        g[(n - 1) as usize] = vec![0];
        assert!(on_cycles(&g).iter().all(|c| *c));
    }

    fn wat(src: &str) -> Vec<u8> {
        wat::parse_str(src).unwrap()
    }

    #[test]
    fn direct_and_indirect_recursion_in_a_module() {
        let m = wat(r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
            (type $t (func))
            (table 2 funcref)
            (elem (i32.const 0) func $c $d)
            (func $a call $b)                                ;; 0: calls b
            (func $b i32.const 0 call 0)                     ;; 1: calls the import
            (func $c call $c)                                ;; 2: self
            (func $d i32.const 0 call_indirect (type $t))    ;; 3: may call c or d
            (func $e call $a))                               ;; 4
        "#);
        assert_eq!(
            recursive_functions(&m, 1).unwrap(),
            vec![false, false, true, true, false]
        );
    }
}
