//! Complementary suppression: after the primary rules have hidden some
//! cells, hide enough others that no hidden cell can be worked out by adding
//! and subtracting released cells of the same run.
//!
//! Released cells are linked by linear relations: a table's margins sum its
//! interior cells, and a table whose dimensions coarsen another's (same
//! dimension names; the same labels, or bucket edges that are a subset) sums
//! that table's cells. Tables so linked form a [`Family`]; the relations of a
//! family are a matrix `A` with `A x = 0` for the true cell values `x`.
//!
//! Those relations hold because the gate makes them hold: a plugin could
//! send linked tables different people, and then subtracting one from the
//! other would isolate them. Every family has a root, the member every other
//! member coarsens, and the gate computes the other members from the root's
//! contributions ([`Derivation`]), as it computes margins.
//!
//! A hidden cell `j` is exactly determined by the released ones if and only
//! if the column of `j` in `A`, restricted to hidden cells, is independent of
//! the other hidden columns (then no change of hidden values that keeps every
//! relation can move `j`). [`Family::exposed`] finds those cells by exact
//! Gaussian elimination over the prime field GF(2^61 - 1). The relations are
//! sums with coefficients ±1; for one- and two-dimensional tables with
//! margins the matrix is totally unimodular, so every rank is the rational
//! rank exactly.
//!
//! [`Family::protect`] hides more cells until none is exposed: for each exposed
//! cell it hides the cheapest "hypercube" through it, a pattern of cells with
//! alternating signs that keeps every relation (in two dimensions, the
//! corners of a rectangle; in one, a pair), so the hidden cell can move
//! along it. Cheapest means fewest entities among the cells it newly hides.
//! The exact check then runs again; if a round makes no progress the whole
//! family is hidden, which is always safe.

use std::collections::BTreeMap;

use crate::shape::Shape;
use crate::spec::{Domain, SpecError, TableSpec};

/// Most released cells that margins and nesting may link into one family:
/// bounds the exact check, which is cubic in the worst case.
pub const MAX_LINKED_CELLS: usize = 10_000;

/// Most work one exact check may take, as relations² × cells: the worst
/// case of the elimination, about half a second on one core. Bounds what a
/// plugin's declarations can cost the host after its run.
const MAX_CHECK_COST: u128 = 1 << 29;

/// Rounds of complements before the whole family is hidden instead.
const MAX_ROUNDS: usize = 16;

/// How a coarser table's cells sum a finer table's interior cells.
#[derive(Debug, Clone)]
struct Nesting {
    /// Family members.
    fine: usize,
    coarse: usize,
    /// Per coarse dimension: the fine dimension it coarsens, and per fine
    /// code the coarse code it falls in (`None`: outside the coarse range).
    dims: DimensionMaps,
}

/// A derived interior cell that does not exist: the root's cell lies
/// outside the derived table's range.
pub(crate) const OUTSIDE: u32 = u32::MAX;

/// How the gate computes a linked table from its family's root: the root's
/// per-entity slots, each mapped to the derived table's interior cell, with
/// the derived table's measures read from the root's measures of the same
/// name and bounds. What the plugin contributed to the derived table itself
/// is checked and then not used.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Derivation {
    /// Gate table index of the root.
    pub root: usize,
    /// Per interior cell of the root, the derived table's interior cell,
    /// or [`OUTSIDE`].
    pub cells: Vec<u32>,
    /// Per measure of the derived table, the root's measure.
    pub measures: Vec<usize>,
}

/// Tables of a run linked by margins or nesting, and their relations.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    /// Gate table index of each member.
    pub members: Vec<usize>,
    /// Every member but the root, by gate table index, and how the gate
    /// derives it from the root: the one member every other coarsens.
    pub derived: Vec<(usize, Derivation)>,
    shapes: Vec<Shape>,
    /// Where each member's cells start among the family's variables.
    offsets: Vec<usize>,
    cells: usize,
    nestings: Vec<Nesting>,
    /// Each relation: Σ coefficient · x = 0.
    relations: Vec<Vec<(usize, i8)>>,
}

/// The coarse code of each fine code, if `coarse` coarsens `fine`.
fn coarsening(coarse: &Domain, fine: &Domain) -> Option<Vec<Option<usize>>> {
    match (coarse, fine) {
        (Domain::Labels(c), Domain::Labels(f)) => {
            let same = c.len() == f.len() && f.iter().all(|l| c.contains(l));
            same.then(|| f.iter().map(|l| c.iter().position(|x| x == l)).collect())
        }
        (Domain::Buckets(c), Domain::Buckets(f)) => {
            if !c.iter().all(|edge| f.contains(edge)) {
                return None;
            }
            let bucket = |lo: f64, hi: f64| c.windows(2).position(|w| w[0] <= lo && hi <= w[1]);
            Some(f.windows(2).map(|w| bucket(w[0], w[1])).collect())
        }
        _ => None,
    }
}

/// How `coarse` sums `fine`, if every dimension of `coarse` coarsens a
/// dimension of `fine` of the same name.
fn nesting(coarse: &TableSpec, fine: &TableSpec) -> Option<DimensionMaps> {
    coarse
        .dimensions
        .iter()
        .map(|cd| {
            let fd = fine.dimensions.iter().position(|fd| fd.name == cd.name)?;
            Some((fd, coarsening(&cd.domain, &fine.dimensions[fd].domain)?))
        })
        .collect()
}

/// Per coarse dimension: the fine dimension it coarsens, and per fine code
/// the coarse code (`None`: outside the coarse range).
type DimensionMaps = Vec<(usize, Vec<Option<usize>>)>;

/// Group the tables into families; tables with no relation are left out.
pub(crate) fn families(specs: &[TableSpec]) -> Result<Vec<Family>, SpecError> {
    let mut pairs = Vec::new();
    for (f, fine) in specs.iter().enumerate() {
        for (c, coarse) in specs.iter().enumerate() {
            if f != c
                && let Some(dims) = nesting(coarse, fine)
            {
                pairs.push((f, c, dims));
            }
        }
    }
    // Union-find over tables.
    let mut root: Vec<usize> = (0..specs.len()).collect();
    fn find(root: &mut [usize], mut i: usize) -> usize {
        while root[i] != i {
            root[i] = root[root[i]];
            i = root[i];
        }
        i
    }
    for &(f, c, _) in &pairs {
        let (a, b) = (find(&mut root, f), find(&mut root, c));
        root[a] = b;
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for t in 0..specs.len() {
        let r = find(&mut root, t);
        groups.entry(r).or_default().push(t);
    }
    let mut families = Vec::new();
    for members in groups.into_values() {
        if members.len() == 1 && !specs[members[0]].margins {
            continue;
        }
        let shapes: Vec<Shape> = members.iter().map(|&t| Shape::of(&specs[t])).collect();
        let mut offsets = Vec::new();
        let mut cells = 0;
        for s in &shapes {
            offsets.push(cells);
            cells += s.count();
        }
        let refuse = |members: &[usize], detail: String| {
            let names: Vec<&str> = members.iter().map(|&t| specs[t].name.as_str()).collect();
            SpecError::Invalid { table: names.join("`, `"), detail }
        };
        if cells > MAX_LINKED_CELLS {
            return Err(refuse(
                &members,
                format!(
                    "margins and nesting link {cells} released cells, more than the {MAX_LINKED_CELLS} \
                 the gate can check for recovery by arithmetic"
                ),
            ));
        }
        let derived = derivations(specs, &members, &pairs).map_err(|detail| refuse(&members, detail))?;
        let member = |t: usize| members.iter().position(|&m| m == t).expect("same family");
        let nestings = pairs
            .iter()
            .filter(|(f, _, _)| members.contains(f))
            .map(|(f, c, dims)| Nesting { fine: member(*f), coarse: member(*c), dims: dims.clone() })
            .collect();
        let mut family = Family { members, derived, shapes, offsets, cells, nestings, relations: Vec::new() };
        family.relations = family.build_relations();
        let rows = family.relations.len() as u128;
        if rows * rows * cells as u128 > MAX_CHECK_COST {
            return Err(refuse(
                &family.members,
                format!(
                    "margins and nesting link {cells} released cells by {rows} sums, more than the gate \
                 can check for recovery by arithmetic; use fewer or smaller linked tables"
                ),
            ));
        }
        families.push(family);
    }
    Ok(families)
}

/// The root of a family, the one member every other member coarsens, and
/// how the gate derives every other member from it.
///
/// A plugin could contribute different people or values to two linked
/// tables; the relations the exact check relies on would then be false, and
/// subtracting one table from the other would isolate the difference. So the
/// gate computes every linked table from the root's contributions, as it
/// computes margins. That needs a root that refines every member and
/// declares every member's measures with the same bounds (so the clamping
/// and the fixed-point scale are the same); a family without one is refused.
fn derivations(
    specs: &[TableSpec],
    members: &[usize],
    pairs: &[(usize, usize, DimensionMaps)],
) -> Result<Vec<(usize, Derivation)>, String> {
    let dims_of = |fine: usize, coarse: usize| {
        pairs.iter().find(|(f, c, _)| *f == fine && *c == coarse).map(|(_, _, dims)| dims)
    };
    let refines_all = |r: usize| members.iter().all(|&m| m == r || dims_of(r, m).is_some());
    let candidates: Vec<usize> = members.iter().copied().filter(|&r| refines_all(r)).collect();
    let Some(&first) = candidates.first() else {
        return Err("are linked by their dimensions, but none of them refines all the others; the gate \
                    derives linked tables from the finest one, so declare a table that they all coarsen"
            .into());
    };
    // Per member, the root's measure of each of its measures.
    let measures_from = |root: usize, m: usize| -> Result<Vec<usize>, String> {
        let (from, to) = (&specs[root], &specs[m]);
        to.measures
            .iter()
            .map(|wanted| {
                from.measures
                    .iter()
                    .position(|have| {
                        have.name == wanted.name && have.lower == wanted.lower && have.upper == wanted.upper
                    })
                    .ok_or_else(|| {
                        format!(
                            "the gate derives table `{}` from the linked table `{}`, which declares no measure \
                             `{}` with bounds [{}, {}]",
                            to.name, from.name, wanted.name, wanted.lower, wanted.upper
                        )
                    })
            })
            .collect()
    };
    let covering = |root: usize| members.iter().try_for_each(|&m| measures_from(root, m).map(drop));
    let root = match candidates.iter().copied().find(|&r| covering(r).is_ok()) {
        Some(root) => root,
        None => return Err(covering(first).err().unwrap_or_default()),
    };
    let root_sizes: Vec<usize> = specs[root].dimensions.iter().map(|d| d.domain.len()).collect();
    let root_cells: usize = root_sizes.iter().product();
    let mut derived = Vec::new();
    for &m in members.iter().filter(|&&m| m != root) {
        let Some(dims) = dims_of(root, m) else { continue };
        let sizes: Vec<usize> = specs[m].dimensions.iter().map(|d| d.domain.len()).collect();
        let mut codes = vec![0; root_sizes.len()];
        let cells = (0..root_cells)
            .map(|mut interior| {
                for d in (0..root_sizes.len()).rev() {
                    codes[d] = interior % root_sizes[d];
                    interior /= root_sizes[d];
                }
                dims.iter()
                    .zip(&sizes)
                    .try_fold(0usize, |cell, ((fd, map), &size)| Some(cell * size + map[codes[*fd]]?))
                    .map_or(OUTSIDE, |cell| cell as u32)
            })
            .collect();
        derived.push((m, Derivation { root, cells, measures: measures_from(root, m)? }));
    }
    Ok(derived)
}

/// GF(2^61 - 1): a Mersenne prime, so reduction is a shift and an add.
mod field {
    pub const P: u64 = (1 << 61) - 1;

    pub fn add(a: u64, b: u64) -> u64 {
        let s = a + b;
        if s >= P { s - P } else { s }
    }

    pub fn mul(a: u64, b: u64) -> u64 {
        let x = u128::from(a) * u128::from(b);
        let s = (x as u64 & P) + (x >> 61) as u64;
        if s >= P { s - P } else { s }
    }

    pub fn neg(a: u64) -> u64 {
        if a == 0 { 0 } else { P - a }
    }

    pub fn inverse(a: u64) -> u64 {
        // Fermat: a^(P-2).
        let (mut base, mut exp, mut acc) = (a, P - 2, 1);
        while exp > 0 {
            if exp & 1 == 1 {
                acc = mul(acc, base);
            }
            base = mul(base, base);
            exp >>= 1;
        }
        acc
    }

    pub fn from_i8(c: i8) -> u64 {
        if c >= 0 { c as u64 } else { P - u64::from(c.unsigned_abs()) }
    }
}

impl Family {
    /// Family variable of member `m`'s cell.
    fn var(&self, m: usize, cell: usize) -> usize {
        self.offsets[m] + cell
    }

    /// The member and cell of a family variable.
    fn locate(&self, var: usize) -> (usize, usize) {
        let m = self.offsets.partition_point(|&o| o <= var) - 1;
        (m, var - self.offsets[m])
    }

    /// How many cells the family releases.
    pub fn cells(&self) -> usize {
        self.cells
    }

    /// The family variables of member `m`'s released cells, in cell order.
    pub fn member_vars(&self, m: usize) -> std::ops::Range<usize> {
        self.offsets[m]..self.offsets[m] + self.shapes[m].count()
    }

    fn build_relations(&self) -> Vec<Vec<(usize, i8)>> {
        let mut relations = Vec::new();
        let mut codes = Vec::new();
        // Margins: along each dimension, the codes sum to the total.
        for (m, shape) in self.shapes.iter().enumerate().filter(|(_, s)| s.margins) {
            for d in 0..shape.sizes.len() {
                let stride = shape.stride(d);
                for start in 0..shape.count() {
                    shape.codes(start, &mut codes);
                    if codes[d] != 0 {
                        continue;
                    }
                    relations.push(
                        (0..shape.radix(d))
                            .map(|v| {
                                let sign = if v == shape.total(d) { -1 } else { 1 };
                                (self.var(m, start + v * stride), sign)
                            })
                            .collect(),
                    );
                }
            }
        }
        // Nesting: each coarse cell is the sum of the fine interior cells it
        // covers.
        let mut covering = Vec::new();
        for nest in &self.nestings {
            // Tables that nest both ways are the same shape: one direction
            // says it all.
            let mutual = self.nestings.iter().any(|o| o.fine == nest.coarse && o.coarse == nest.fine);
            if mutual && nest.fine > nest.coarse {
                continue;
            }
            let coarse = &self.shapes[nest.coarse];
            let first = relations.len();
            relations.extend((0..coarse.count()).map(|b| vec![(self.var(nest.coarse, b), -1)]));
            for a in self.interior_cells(nest.fine) {
                if let Some(b) = self.image(nest, a, &mut codes) {
                    coarse.covering(b, &mut covering);
                    for &c in &covering {
                        relations[first + c].push((self.var(nest.fine, a), 1));
                    }
                }
            }
        }
        relations
    }

    /// Member `m`'s interior cells (released-cell indices).
    fn interior_cells(&self, m: usize) -> impl Iterator<Item = usize> + '_ {
        let shape = &self.shapes[m];
        let interior: usize = shape.sizes.iter().product();
        (0..interior).map(|i| shape.cell_of_interior(i))
    }

    /// The coarse interior cell a fine interior cell falls in, if any.
    fn image(&self, nest: &Nesting, fine_cell: usize, codes: &mut Vec<usize>) -> Option<usize> {
        self.shapes[nest.fine].codes(fine_cell, codes);
        let coarse: Option<Vec<usize>> = nest.dims.iter().map(|(fd, map)| map[codes[*fd]]).collect();
        Some(self.shapes[nest.coarse].index(&coarse?))
    }

    /// Hidden cells that the released cells determine exactly.
    pub fn exposed(&self, hidden: &[bool]) -> Vec<usize> {
        let columns: Vec<usize> = (0..self.cells).filter(|&v| hidden[v]).collect();
        let mut column_of = vec![usize::MAX; self.cells];
        for (c, &v) in columns.iter().enumerate() {
            column_of[v] = c;
        }
        let width = columns.len();
        let mut rows: Vec<Vec<u64>> = Vec::new();
        for relation in &self.relations {
            if relation.iter().any(|&(v, _)| hidden[v]) {
                let mut row = vec![0u64; width];
                for &(v, coef) in relation.iter().filter(|&&(v, _)| hidden[v]) {
                    let c = column_of[v];
                    row[c] = field::add(row[c], field::from_i8(coef));
                }
                rows.push(row);
            }
        }

        // Reduced row echelon form.
        let mut pivots: Vec<usize> = Vec::new();
        for col in 0..width {
            let r = pivots.len();
            let Some(found) = (r..rows.len()).find(|&i| rows[i][col] != 0) else { continue };
            rows.swap(r, found);
            let scale = field::inverse(rows[r][col]);
            for x in &mut rows[r][col..] {
                *x = field::mul(*x, scale);
            }
            let (above, rest) = rows.split_at_mut(r);
            let (pivot, below) = rest.split_first_mut().expect("row r exists");
            for row in above.iter_mut().chain(below.iter_mut()) {
                let factor = row[col];
                if factor == 0 {
                    continue;
                }
                let factor = field::neg(factor);
                for (x, &p) in row[col..].iter_mut().zip(&pivot[col..]) {
                    if p != 0 {
                        *x = field::add(*x, field::mul(factor, p));
                    }
                }
            }
            pivots.push(col);
        }
        // A pivot whose row has nothing in any free column is fixed.
        pivots
            .iter()
            .enumerate()
            .filter(|&(r, &col)| rows[r][col + 1..].iter().all(|&x| x == 0))
            .map(|(_, &col)| columns[col])
            .collect()
    }

    /// Hide cells until no hidden cell is exposed. `cost` is what hiding
    /// each cell loses (its entities, plus one).
    ///
    /// `known` cells are ones a reader knows without their release: cells
    /// no entity contributed to, which a plugin's author can arrange. They
    /// are never hidden (a hidden empty cell would hide nothing) and no
    /// pattern moves them.
    pub fn protect(&self, hidden: &mut [bool], cost: &[u64], known: &[bool]) {
        debug_assert!(hidden.iter().zip(known).all(|(&h, &k)| !(h && k)), "known cells are not hidden");
        for _ in 0..MAX_ROUNDS {
            let exposed = self.exposed(hidden);
            if exposed.is_empty() {
                return;
            }
            let mut progress = false;
            for j in exposed {
                if let Some(support) = self.cheapest_pattern(j, hidden, cost, known) {
                    for v in support {
                        progress |= !hidden[v];
                        hidden[v] = true;
                    }
                }
            }
            if !progress {
                break;
            }
        }
        if !self.exposed(hidden).is_empty() {
            hidden.fill(true);
        }
    }

    /// Whether member `m` is coarser than some other member that it does
    /// not also refine: its own patterns would break that relation.
    fn strictly_refined(&self, m: usize) -> bool {
        self.nestings
            .iter()
            .any(|n| n.coarse == m && !self.nestings.iter().any(|o| o.fine == m && o.coarse == n.fine))
    }

    /// The cheapest set of cells, `j` among them, that carries a change of
    /// values keeping every relation.
    fn cheapest_pattern(
        &self,
        j: usize,
        hidden: &[bool],
        cost: &[u64],
        known: &[bool],
    ) -> Option<Vec<usize>> {
        let (x, cell) = self.locate(j);
        let mut best: Option<(u64, Vec<usize>)> = None;
        // Patterns start in the finest tables that refine j's own.
        let sources = (0..self.members.len()).filter(|&y| {
            (y == x || self.nestings.iter().any(|n| n.fine == y && n.coarse == x))
                && !self.strictly_refined(y)
        });
        for y in sources {
            for start in self.preimages(y, x, cell) {
                for pattern in self.hypercubes(y, start, hidden, cost) {
                    let signed = self.with_images(y, &pattern);
                    if signed.get(&j).copied().unwrap_or(0) == 0 {
                        continue;
                    }
                    let support: Vec<usize> =
                        signed.into_iter().filter(|&(_, s)| s != 0).map(|(v, _)| v).collect();
                    if support.iter().any(|&v| known[v]) {
                        continue;
                    }
                    let price: u64 = support.iter().filter(|&&v| !hidden[v]).map(|&v| cost[v]).sum();
                    if best.as_ref().is_none_or(|(b, _)| price < *b) {
                        best = Some((price, support));
                    }
                }
            }
        }
        best.map(|(_, support)| support)
    }

    /// Cells of member `y` that fall in member `x`'s `cell` (at most 64).
    fn preimages(&self, y: usize, x: usize, cell: usize) -> Vec<usize> {
        if y == x {
            return vec![cell];
        }
        let Some(nest) = self.nestings.iter().find(|n| n.fine == y && n.coarse == x) else { return vec![] };
        let (fine, coarse) = (&self.shapes[y], &self.shapes[x]);
        let mut coarse_codes = Vec::new();
        coarse.codes(cell, &mut coarse_codes);
        let choices: Vec<Vec<usize>> = (0..fine.sizes.len())
            .map(|fd| {
                let wanted = nest.dims.iter().position(|(d, _)| *d == fd);
                match wanted {
                    Some(cd) if coarse_codes[cd] != coarse.total(cd) || !coarse.margins => {
                        let map = &nest.dims[cd].1;
                        (0..fine.sizes[fd]).filter(|&f| map[f] == Some(coarse_codes[cd])).collect()
                    }
                    // A total, or a dimension the coarse table sums away.
                    _ if fine.margins => vec![fine.total(fd)],
                    _ => (0..fine.sizes[fd]).collect(),
                }
            })
            .collect();
        let mut cells = vec![Vec::new()];
        for options in &choices {
            cells = cells
                .iter()
                .flat_map(|prefix| {
                    options.iter().map(move |&o| {
                        let mut next: Vec<usize> = prefix.clone();
                        next.push(o);
                        next
                    })
                })
                .take(64)
                .collect();
        }
        cells.iter().map(|codes| fine.index(codes)).collect()
    }

    /// Sign patterns through `start` in member `y` that keep its margins:
    /// with margins, every hypercube (one alternative code per dimension,
    /// signs alternating, a `total` code flipping the sign); without, the
    /// cell alone.
    fn hypercubes(&self, y: usize, start: usize, hidden: &[bool], cost: &[u64]) -> Vec<Vec<(usize, i64)>> {
        let shape = &self.shapes[y];
        if !shape.margins {
            return vec![vec![(start, 1)]];
        }
        let dims = shape.sizes.len();
        let mut codes = Vec::new();
        shape.codes(start, &mut codes);
        // Per dimension, the cheapest few alternatives by the cell that
        // changes only that code: keeps the search small in many dimensions.
        let keep = (256f64.powf(1.0 / dims as f64) as usize).max(1);
        let price = |cell: usize| if hidden[self.var(y, cell)] { 0 } else { cost[self.var(y, cell)] };
        let alternatives: Vec<Vec<usize>> = (0..dims)
            .map(|d| {
                let mut alts: Vec<usize> = (0..shape.radix(d)).filter(|&c| c != codes[d]).collect();
                alts.sort_by_key(|&c| {
                    let mut moved = codes.clone();
                    moved[d] = c;
                    (price(shape.index(&moved)), c)
                });
                alts.truncate(keep);
                alts
            })
            .collect();
        let sign = |d: usize, code: usize| if code == shape.total(d) { -1 } else { 1 };
        let mut patterns = Vec::new();
        let mut choice = vec![0usize; dims];
        'outer: loop {
            let mut pattern = Vec::with_capacity(1 << dims);
            for corner in 0..1usize << dims {
                let mut c = codes.clone();
                let mut s = 1i64;
                for d in 0..dims {
                    if corner >> d & 1 == 1 {
                        c[d] = alternatives[d][choice[d]];
                        s = -s;
                    }
                    s *= sign(d, c[d]);
                }
                pattern.push((shape.index(&c), s));
            }
            patterns.push(pattern);
            for d in 0..dims {
                choice[d] += 1;
                if choice[d] < alternatives[d].len() {
                    continue 'outer;
                }
                choice[d] = 0;
            }
            break;
        }
        patterns
    }

    /// A pattern in member `y` as family variables, with what it changes in
    /// every table that `y`'s interior cells sum into.
    fn with_images(&self, y: usize, pattern: &[(usize, i64)]) -> BTreeMap<usize, i64> {
        let mut signed: BTreeMap<usize, i64> = BTreeMap::new();
        let mut codes = Vec::new();
        let mut covering = Vec::new();
        for &(cell, s) in pattern {
            *signed.entry(self.var(y, cell)).or_default() += s;
            self.shapes[y].codes(cell, &mut codes);
            if !self.shapes[y].is_interior(&codes) {
                continue;
            }
            for nest in self.nestings.iter().filter(|n| n.fine == y) {
                if let Some(b) = self.image(nest, cell, &mut codes) {
                    self.shapes[nest.coarse].covering(b, &mut covering);
                    for &c in &covering {
                        *signed.entry(self.var(nest.coarse, c)).or_default() += s;
                    }
                }
            }
        }
        signed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Dimension, Measure, Statistic};

    fn table(name: &str, dims: &[(&str, Domain)], margins: bool) -> TableSpec {
        TableSpec {
            name: name.into(),
            description: String::new(),
            dimensions: dims
                .iter()
                .map(|(n, d)| Dimension { name: (*n).into(), domain: d.clone() })
                .collect(),
            measures: vec![Measure { name: "x".into(), lower: 0.0, upper: 1.0 }],
            statistics: vec![Statistic::Count],
            margins,
        }
    }

    fn labels(n: usize) -> Domain {
        Domain::Labels((0..n).map(|i| format!("l{i}")).collect())
    }

    #[test]
    fn one_hidden_cell_of_a_line_is_exposed_two_are_not() {
        let fams = families(&[table("t", &[("a", labels(3))], true)]).unwrap();
        let f = &fams[0];
        assert_eq!(f.cells(), 4);
        let mut hidden = vec![false, true, false, false];
        assert_eq!(f.exposed(&hidden), vec![1]);
        hidden[2] = true;
        assert!(f.exposed(&hidden).is_empty());
    }

    #[test]
    fn two_hidden_cells_of_one_row_are_exposed_by_their_columns() {
        let fams = families(&[table("t", &[("a", labels(3)), ("b", labels(3))], true)]).unwrap();
        let f = &fams[0];
        let mut hidden = vec![false; 16];
        hidden[0] = true; // (0,0)
        hidden[1] = true; // (0,1)
        assert_eq!(f.exposed(&hidden), vec![0, 1]);
        // Complete the rectangle: rows 0 and 1, columns 0 and 1.
        hidden[4] = true;
        hidden[5] = true;
        assert!(f.exposed(&hidden).is_empty());
    }

    #[test]
    fn protect_leaves_nothing_exposed() {
        let fams = families(&[table("t", &[("a", labels(4)), ("b", labels(5))], true)]).unwrap();
        let f = &fams[0];
        let mut hidden = vec![false; f.cells()];
        hidden[7] = true;
        let cost: Vec<u64> = (0..f.cells() as u64).map(|c| 10 + c % 7).collect();
        f.protect(&mut hidden, &cost, &vec![false; f.cells()]);
        assert!(f.exposed(&hidden).is_empty());
        assert_eq!(hidden.iter().filter(|&&h| h).count(), 4, "one rectangle suffices");
    }

    #[test]
    fn nested_tables_form_one_family() {
        let fine = table("fine", &[("age", Domain::Buckets(vec![0.0, 10.0, 20.0, 30.0, 40.0]))], false);
        let coarse = table("coarse", &[("age", Domain::Buckets(vec![0.0, 20.0, 40.0]))], false);
        let other = table("other", &[("region", labels(2))], false);
        let fams = families(&[fine, coarse, other]).unwrap();
        assert_eq!(fams.len(), 1);
        let f = &fams[0];
        assert_eq!(f.members, vec![0, 1]);
        // Hide fine [0,10): coarse [0,20) minus fine [10,20) gives it away.
        let mut hidden = vec![false; f.cells()];
        hidden[0] = true;
        assert_eq!(f.exposed(&hidden), vec![0]);
        f.protect(&mut hidden, &[1; 6], &[false; 6]);
        assert!(f.exposed(&hidden).is_empty());
    }

    #[test]
    fn linked_tables_are_derived_from_the_one_that_refines_them_all() {
        let ages = |edges: &[f64]| Domain::Buckets(edges.to_vec());
        let coarse = table("coarse", &[("age", ages(&[0.0, 20.0, 40.0]))], true);
        let fine =
            table("fine", &[("region", labels(2)), ("age", ages(&[0.0, 10.0, 20.0, 30.0, 40.0]))], false);
        let fams = families(&[coarse, fine]).unwrap();
        let derived = &fams[0].derived;
        assert_eq!(derived.len(), 1);
        let (t, d) = &derived[0];
        assert_eq!((*t, d.root, d.measures.as_slice()), (0, 1, &[0][..]));
        // Fine interior cell (region r, age a) is 4r + a; coarse age a / 2.
        assert_eq!(d.cells, vec![0, 0, 1, 1, 0, 0, 1, 1]);

        // A coarse range narrower than the fine one: the rest is outside.
        let narrow = table("narrow", &[("age", ages(&[10.0, 30.0]))], false);
        let fine = table("fine", &[("age", ages(&[0.0, 10.0, 20.0, 30.0, 40.0]))], false);
        let fams = families(&[narrow, fine]).unwrap();
        assert_eq!(fams[0].derived[0].1.cells, vec![OUTSIDE, 0, 0, OUTSIDE]);
    }

    #[test]
    fn linked_tables_without_one_finest_table_are_refused() {
        // By age and region, by age and sex, by age: the last is linked to
        // both, and neither refines the other.
        let ages = Domain::Buckets(vec![0.0, 20.0, 40.0]);
        let specs = [
            table("by_region", &[("age", ages.clone()), ("region", labels(2))], false),
            table("by_sex", &[("age", ages.clone()), ("sex", labels(2))], false),
            table("by_age", &[("age", ages)], false),
        ];
        let err = families(&specs).unwrap_err().to_string();
        assert!(err.contains("none of them refines all the others"), "{err}");
        assert!(err.contains("by_region") && err.contains("by_sex") && err.contains("by_age"), "{err}");
        families(&specs[..1]).unwrap();
        families(&[specs[0].clone(), specs[2].clone()]).unwrap();
    }

    #[test]
    fn a_linked_table_needs_its_measures_in_the_finest_one() {
        let ages = |edges: &[f64]| Domain::Buckets(edges.to_vec());
        let fine = table("fine", &[("age", ages(&[0.0, 10.0, 20.0]))], false);
        let mut coarse = table("coarse", &[("age", ages(&[0.0, 20.0]))], false);
        coarse.measures[0].upper = 2.0;
        let err = families(&[fine.clone(), coarse.clone()]).unwrap_err().to_string();
        assert!(err.contains("no measure `x` with bounds [0, 2]"), "{err}");
        coarse.measures[0].name = "other".into();
        let err = families(&[fine.clone(), coarse]).unwrap_err().to_string();
        assert!(err.contains("no measure `other`"), "{err}");
        // Identical declarations: the one that declares every measure is
        // the root, whichever comes first.
        let mut more = fine.clone();
        more.name = "more".into();
        more.measures.push(Measure { name: "y".into(), lower: 0.0, upper: 1.0 });
        let fams = families(&[fine, more]).unwrap();
        assert_eq!(fams[0].derived[0].0, 0);
        assert_eq!(fams[0].derived[0].1.root, 1);
    }

    #[test]
    fn too_many_linked_cells_are_refused() {
        let big = table("big", &[("a", labels(200)), ("b", labels(200))], true);
        let err = families(&[big]).unwrap_err().to_string();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn families_too_costly_to_check_are_refused() {
        // Four copies of a 40 x 40 table with margins: every copy sums every
        // other, thousands of relations over 6 724 cells.
        let copies: Vec<TableSpec> = (0..4)
            .map(|i| table(&format!("copy{i}"), &[("a", labels(40)), ("b", labels(40))], true))
            .collect();
        let err = families(&copies).unwrap_err().to_string();
        assert!(err.contains("more than the gate can check"), "{err}");
        // One such table alone is fine.
        families(&copies[..1]).unwrap();
    }

    #[test]
    fn field_inverse_is_an_inverse() {
        for a in [1u64, 2, 12345, field::P - 1] {
            assert_eq!(field::mul(a, field::inverse(a)), 1);
        }
    }
}
