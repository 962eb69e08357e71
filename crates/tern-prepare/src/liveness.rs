//! Which locals are live after given instructions of a function body.
//!
//! The unwind transform saves, at each site, only the locals the rest of
//! the function can still read ([`crate::unwind`]): saving every local
//! keeps every local alive across the whole function, and in the large
//! functions of interpreters and compilers Cranelift then spends registers
//! and moves on values long dead.
//!
//! A classic backward data-flow over the basic blocks of structured code:
//! every control instruction is a block of its own, and the runs between
//! them are straight-line code. A local is live after an instruction when
//! some path from there reads it before writing it. Unreachable code and
//! the operand stack need no special case: only `local.get`, `local.set`
//! and `local.tee` matter, and code that no path reaches has no effect on
//! what is live elsewhere.

use wasmparser::Operator;

/// A set of local indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locals(Vec<u64>);

impl Locals {
    /// The empty set, for locals `0..n`.
    pub fn new(n: usize) -> Self {
        Locals(vec![0; n.div_ceil(64)])
    }

    /// Adds local `l` (growing the set if needed).
    pub fn insert(&mut self, l: u32) {
        let (w, b) = (l as usize / 64, l % 64);
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << b;
    }

    /// Removes local `l`.
    pub fn remove(&mut self, l: u32) {
        if let Some(w) = self.0.get_mut(l as usize / 64) {
            *w &= !(1 << (l % 64));
        }
    }

    /// How many locals the set holds.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// True for the empty set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The members, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &w)| {
            (0..64)
                .filter(move |b| w & (1u64 << b) != 0)
                .map(move |b| (i * 64 + b) as u32)
        })
    }

    /// The same set with trailing empty words removed, so that equal sets
    /// compare equal whatever their capacity.
    pub fn trimmed(mut self) -> Self {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
        self
    }
}

fn is_control(op: &Operator) -> bool {
    matches!(
        op,
        Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Else
            | Operator::End
            | Operator::Br { .. }
            | Operator::BrIf { .. }
            | Operator::BrTable { .. }
            | Operator::Return
            | Operator::Unreachable
    )
}

/// Applies one instruction backwards: `live` goes from after it to before.
fn step(op: &Operator, live: &mut Locals) {
    match op {
        Operator::LocalGet { local_index } => live.insert(*local_index),
        Operator::LocalSet { local_index } => live.remove(*local_index),
        Operator::LocalTee { local_index } => live.remove(*local_index),
        _ => {}
    }
}

/// For each position in `want` (indices into `ops`, the whole body of a
/// valid function with `nlocals` locals, ending with its `end`), the
/// locals live right after that instruction, in the same order.
pub fn live_after(ops: &[Operator], nlocals: usize, want: &[usize]) -> Result<Vec<Locals>, String> {
    let n = ops.len();
    // Basic blocks: each control instruction alone, and maximal runs of
    // other instructions. `block_of[i]` is the block holding instruction i.
    let mut starts = Vec::new();
    let mut block_of = vec![0usize; n];
    for (i, op) in ops.iter().enumerate() {
        if i == 0 || is_control(op) || is_control(&ops[i - 1]) {
            starts.push(i);
        }
        block_of[i] = starts.len() - 1;
    }
    let nb = starts.len();
    let end_of = |b: usize| if b + 1 < nb { starts[b + 1] } else { n };

    // Matching ends and elses, and the label stack at each branch.
    let mut end = vec![usize::MAX; n];
    let mut els = vec![usize::MAX; n];
    let mut open: Vec<usize> = Vec::new();
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); nb];
    // Branch targets need the construct's end, known only later: first
    // collect (block, construct opener), resolve after.
    let mut branches: Vec<(usize, usize)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let label = |open: &[usize], d: u32| -> Result<usize, String> {
            open.len()
                .checked_sub(1 + d as usize)
                .map(|k| open[k])
                .ok_or_else(|| format!("branch depth {d} out of range at {i}"))
        };
        match op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => open.push(i),
            Operator::Else => {
                let &c = open.last().ok_or("else outside an if")?;
                els[c] = i;
            }
            Operator::End => {
                if let Some(c) = open.pop() {
                    end[c] = i;
                }
            }
            Operator::Br { relative_depth } | Operator::BrIf { relative_depth } => {
                // The function's own label (depth = all open) is its end.
                let target = if *relative_depth as usize == open.len() {
                    usize::MAX
                } else {
                    label(&open, *relative_depth)?
                };
                branches.push((block_of[i], target));
            }
            Operator::BrTable { targets } => {
                for d in targets
                    .targets()
                    .chain(std::iter::once(Ok(targets.default())))
                {
                    let d = d.map_err(|e| e.to_string())?;
                    let target = if d as usize == open.len() {
                        usize::MAX
                    } else {
                        label(&open, d)?
                    };
                    branches.push((block_of[i], target));
                }
            }
            _ => {}
        }
    }
    // Where a branch to the construct opened at `c` goes: a loop's start,
    // or the end of a block or if. `usize::MAX` (the function's label)
    // leaves the function: no successor.
    let target_block = |c: usize| -> Option<usize> {
        if c == usize::MAX {
            return None;
        }
        match ops[c] {
            Operator::Loop { .. } => Some(block_of[c + 1]),
            _ => Some(block_of[end[c]]),
        }
    };
    for &(b, c) in &branches {
        if let Some(t) = target_block(c) {
            succ[b].push(t);
        }
    }
    // Fall-through edges.
    let mut if_of_else = vec![usize::MAX; n];
    for (c, &e) in els.iter().enumerate() {
        if e != usize::MAX {
            if_of_else[e] = c;
        }
    }
    for (b, succ) in succ.iter_mut().enumerate() {
        let last = end_of(b) - 1;
        let next = (last + 1 < n).then(|| block_of[last + 1]);
        match ops[last] {
            Operator::Br { .. }
            | Operator::BrTable { .. }
            | Operator::Return
            | Operator::Unreachable => {}
            Operator::If { .. } => {
                succ.extend(next);
                let other = if els[last] != usize::MAX {
                    els[last] + 1
                } else {
                    end[last]
                };
                if other < n {
                    succ.push(block_of[other]);
                }
            }
            Operator::Else => {
                // Reached by falling off the then-arm: on to the if's end.
                let c = if_of_else[last];
                if c != usize::MAX && end[c] < n {
                    succ.push(block_of[end[c]]);
                }
            }
            _ => succ.extend(next),
        }
    }

    // Per block: what it reads before writing (gen) and what it writes
    // (kill), so that the fixpoint works on sets alone. Flat bitsets of
    // `w` words per block.
    let w = nlocals.div_ceil(64).max(1);
    let mut gen = vec![0u64; nb * w];
    let mut kill = vec![0u64; nb * w];
    let bit = |l: u32| -> Result<(usize, u64), String> {
        if l as usize >= nlocals {
            return Err(format!("local {l} out of range"));
        }
        Ok((l as usize / 64, 1u64 << (l % 64)))
    };
    for b in 0..nb {
        let (g, k) = (&mut gen[b * w..(b + 1) * w], &mut kill[b * w..(b + 1) * w]);
        for op in ops[starts[b]..end_of(b)].iter().rev() {
            match op {
                Operator::LocalGet { local_index } => {
                    let (i, m) = bit(*local_index)?;
                    g[i] |= m;
                }
                Operator::LocalSet { local_index } | Operator::LocalTee { local_index } => {
                    let (i, m) = bit(*local_index)?;
                    g[i] &= !m;
                    k[i] |= m;
                }
                _ => {}
            }
        }
    }
    // Backward fixpoint, blocks in reverse order: in = gen | (out - kill).
    let mut live_in = gen.clone();
    let mut live_out = vec![0u64; nb * w];
    let mut out = vec![0u64; w];
    let mut changed = true;
    while changed {
        changed = false;
        for b in (0..nb).rev() {
            out.fill(0);
            for &s in &succ[b] {
                for (o, i) in out.iter_mut().zip(&live_in[s * w..(s + 1) * w]) {
                    *o |= i;
                }
            }
            for x in 0..w {
                let v = live_in[b * w + x] | (out[x] & !kill[b * w + x]);
                // Sets only grow from one round to the next.
                changed |= v != live_in[b * w + x];
                live_in[b * w + x] = v;
            }
            live_out[b * w..(b + 1) * w].copy_from_slice(&out);
        }
    }
    let mut result = Vec::with_capacity(want.len());
    for &p in want {
        if p >= n {
            return Err(format!("position {p} past the body's end"));
        }
        let b = block_of[p];
        let mut l = Locals(live_out[b * w..(b + 1) * w].to_vec());
        for op in ops[p + 1..end_of(b)].iter().rev() {
            step(op, &mut l);
        }
        result.push(l);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops_of(wat: &str) -> Vec<Operator<'static>> {
        let wasm = wat::parse_str(wat).unwrap();
        let wasm: &'static [u8] = Box::leak(wasm.into_boxed_slice());
        // The last function's body.
        let mut v = Vec::new();
        for p in wasmparser::Parser::new(0).parse_all(wasm) {
            if let wasmparser::Payload::CodeSectionEntry(body) = p.unwrap() {
                let mut r = body.get_operators_reader().unwrap();
                v.clear();
                while !r.eof() {
                    v.push(r.read().unwrap());
                }
            }
        }
        v
    }

    fn call_positions(ops: &[Operator]) -> Vec<usize> {
        ops.iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, Operator::Call { .. }))
            .map(|(i, _)| i)
            .collect()
    }

    fn sets(wat: &str) -> Vec<Vec<u32>> {
        let ops = ops_of(wat);
        live_after(&ops, 8, &call_positions(&ops))
            .unwrap()
            .into_iter()
            .map(|l| l.iter().collect())
            .collect()
    }

    #[test]
    fn straight_line_and_overwrites() {
        let s = sets(
            r#"(module (func $f) (func (param i32 i32) (local i32)
                 call $f
                 (local.set 2 (local.get 0))
                 call $f
                 (drop (local.get 2))
                 call $f))"#,
        );
        assert_eq!(s, vec![vec![0], vec![2], vec![]]);
    }

    #[test]
    fn loops_keep_what_the_next_iteration_reads() {
        let s = sets(
            r#"(module (func $f) (func (param i32) (local i32 i32)
                 (local.set 2 (i32.const 5))
                 (loop $l
                   call $f
                   (local.set 1 (i32.add (local.get 1) (local.get 0)))
                   (br_if $l (local.get 1)))
                 call $f
                 (drop (local.get 2))))"#,
        );
        assert_eq!(s, vec![vec![0, 1, 2], vec![2]]);
    }

    #[test]
    fn branches_and_arms() {
        let s = sets(
            r#"(module (func $f) (func (param i32 i32 i32) (result i32)
                 (block $b
                   call $f
                   (br_if $b (local.get 0))
                   (return (local.get 1)))
                 call $f
                 (if (result i32) (local.get 0)
                   (then call $f (local.get 2))
                   (else (i32.const 0)))))"#,
        );
        // After the first call: 0 (the br_if), 1 (the return) and 2 (read
        // after the block). After the second: 0 and 2. Inside the then-arm: 2.
        assert_eq!(s, vec![vec![0, 1, 2], vec![0, 2], vec![2]]);
    }

    #[test]
    fn tee_kills_and_br_table_joins() {
        let s = sets(
            r#"(module (func $f) (func (param i32 i32 i32)
                 (block $a (block $b
                   call $f
                   (br_table $a $b (local.get 0)))
                   (drop (local.get 1)))
                 (drop (local.get 2))
                 call $f
                 (drop (local.tee 1 (i32.const 1)))
                 (drop (local.get 1))))"#,
        );
        assert_eq!(s, vec![vec![0, 1, 2], vec![]]);
    }
}
