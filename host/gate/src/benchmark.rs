//! Benchmark releases over time: the subtraction rule across versions, and
//! each tenant's own position next to the released peer aggregates.
//!
//! Two releases of one cell whose contributing tenants differ by fewer than
//! `t` tenants let their difference isolate those few. A benchmark's
//! [`ReleaseHistory`] keeps, per cell, every tenant set a version released it
//! with. A new value whose set differs from one of them by at least one and
//! fewer than `t` tenants is held: it counts as suppressed for complementary
//! suppression, and the cell shows the last released values, marked with
//! their version.
//!
//! A tenant's own position is its own values under the tenant rules (its
//! data only, gated like any run of its own) and, where the cell allows it,
//! its rank band among the cell's contributing tenants: an order, never a
//! peer's value.

use rand_010::CryptoRng;
use serde::{Deserialize, Serialize};

use crate::accumulator::fixed_point_scales;
use crate::dp::{DpError, Interval};
use crate::release::{Gate, Release, ReleasedCell, ReleasedTable, Scope, TenantIntake, cell_values};
use crate::spec::{Statistic, TableSpec};
use crate::tally::Tally;

/// What earlier versions of a benchmark released, per cell: the input of the
/// subtraction rule. Tenants appear only as the ordinals the caller gave
/// them, and no tenant's own value is kept; host-internal all the same.
/// A caller may add the sets of other releases of the same tables (a
/// sibling benchmark of the same plugin): a close set then suppresses the
/// cell even where this benchmark has no value of its own to hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseHistory {
    pub tables: Vec<TableHistory>,
}

/// One table's history, in its cell order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableHistory {
    pub name: String,
    pub cells: Vec<CellHistory>,
}

/// One cell's history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CellHistory {
    /// Every distinct set of tenant ordinals (sorted) a version released
    /// this cell with.
    pub released_sets: Vec<Vec<u32>>,
    /// The version that last released the cell, and its values.
    pub last: Option<(u64, Vec<f64>)>,
    /// Per tenant, what its last bands for this cell were computed from.
    #[serde(default)]
    pub bands_given: Vec<BandGiven>,
}

/// What a tenant's bands for a cell were computed from: blake3 of its
/// peers' values and of its own, never the values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandGiven {
    pub member: u32,
    pub peers: String,
    pub own: String,
}

/// blake3 of value rows, in an order that does not depend on the tenants'.
fn fingerprint(rows: &[Vec<f64>]) -> String {
    let mut bits: Vec<Vec<u64>> = rows.iter().map(|r| r.iter().map(|v| v.to_bits()).collect()).collect();
    bits.sort_unstable();
    let mut hasher = blake3::Hasher::new();
    for row in &bits {
        for v in row {
            hasher.update(&v.to_le_bytes());
        }
        hasher.update(b";");
    }
    hasher.finalize().to_hex()[..32].to_owned()
}

/// A benchmark version: what the vendor sees, what the next version is
/// checked against, and what each tenant sees of itself.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkRelease {
    pub release: Release,
    pub history: ReleaseHistory,
    /// Per intake, in order.
    pub positions: Vec<OwnPosition>,
}

/// One tenant's view of a benchmark version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnPosition {
    pub tables: Vec<PositionTable>,
}

/// One table of a tenant's view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionTable {
    pub name: String,
    pub dimensions: Vec<String>,
    pub statistics: Vec<String>,
    pub cells: Vec<PositionCell>,
}

impl PositionTable {
    /// A tenant's view of the released table `peers`, cell by cell.
    fn beside(peers: &ReleasedTable, cells: Vec<PositionCell>) -> Self {
        PositionTable {
            name: peers.name.clone(),
            dimensions: peers.dimensions.clone(),
            statistics: peers.statistics.clone(),
            cells,
        }
    }
}

/// One cell of a tenant's view: the released peer aggregate (as the vendor
/// sees it), the tenant's own values and, per statistic, its rank band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionCell {
    pub key: Vec<String>,
    pub peers: Option<Vec<f64>>,
    /// Under differential privacy: the 95 % interval of each peer value's
    /// noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_intervals: Option<Vec<Interval>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_from: Option<u64>,
    /// The tenant's own values, released under the tenant rules.
    pub own: Option<Vec<f64>>,
    /// Per statistic: the band, or nothing when the cell does not allow one.
    pub bands: Vec<Option<RankBand>>,
}

/// Where a tenant's value stands among a cell's contributing tenants: band 1
/// of `of` holds the highest values. Every band spans at least two tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankBand {
    pub band: u32,
    pub of: u32,
}

/// The most bands a cell is cut into (quintiles).
pub const MAX_BANDS: usize = 5;

/// How far, as a share of the peers' mean, every peer must be able to move
/// for a band to be given.
const ROOM: f64 = 0.1;

impl Gate {
    /// Release version `version` of a benchmark: the benchmark rules over
    /// every intake, then the subtraction rule against `history`. `members`
    /// are the tenants' ordinals, one per intake, stable across versions.
    pub fn release_benchmark(
        &self,
        intakes: &[TenantIntake],
        members: &[u32],
        history: &ReleaseHistory,
        version: u64,
    ) -> BenchmarkRelease {
        assert_eq!(self.scope(), Scope::Benchmark, "a benchmark release needs a benchmark gate");
        assert_eq!(intakes.len(), members.len(), "one ordinal per intake");
        let specs = self.specs();
        let (tallies, mut hidden) = self.primary_all(intakes, Scope::Benchmark);

        // Each tenant alone, under the tenant rules: its own values, and who
        // contributed to which cell.
        let own: Vec<(Vec<Tally>, Release)> = intakes.iter().map(|intake| self.own(intake)).collect();
        let contributors = |t: usize, cell: usize| -> Vec<u32> {
            let mut set: Vec<u32> = own
                .iter()
                .zip(members)
                .filter(|((tallies, _), _)| tallies[t].entities[cell] > 0)
                .map(|(_, &m)| m)
                .collect();
            set.sort_unstable();
            set
        };

        let min_tenants = self.policy().min_tenants as usize;
        let mut changed = vec![false; specs.len()];
        for (t, spec) in specs.iter().enumerate() {
            let Some(past) = history_of(history, spec, hidden[t].len()) else { continue };
            changed[t] = past.cells.iter().enumerate().any(|(cell, past)| {
                if hidden[t][cell] {
                    return false;
                }
                let now = contributors(t, cell);
                past.released_sets.iter().any(|set| {
                    let differ = symmetric_difference(set, &now);
                    differ >= 1 && differ < min_tenants
                })
            });
        }
        // A close cell holds its whole table and every table linked to it. A
        // fresh cell beside a held one would show which cells the tenants
        // who came or went were in, and with an unchanged complement from an
        // earlier version could close a line around the held cell. A cell
        // with no value of its own to stand (a close set from a sibling
        // benchmark) is only suppressed.
        let mut held: Vec<Vec<bool>> = hidden.iter().map(|h| vec![false; h.len()]).collect();
        for t in (0..specs.len()).filter(|&t| self.linked_tables(t).iter().any(|&u| changed[u])) {
            let past = history_of(history, &specs[t], hidden[t].len());
            for cell in 0..hidden[t].len() {
                if !hidden[t][cell] {
                    held[t][cell] = past.is_some_and(|p| p.cells[cell].last.is_some());
                    hidden[t][cell] = true;
                }
            }
        }
        self.protect(&tallies, &mut hidden);
        let mut release = self.assemble(&tallies, &hidden, Scope::Benchmark);

        let mut next = ReleaseHistory::default();
        for (t, (spec, table)) in specs.iter().zip(&mut release.tables).enumerate() {
            let past = history_of(history, spec, table.cells.len());
            let mut cells =
                past.map_or_else(|| vec![CellHistory::default(); table.cells.len()], |p| p.cells.clone());
            for (c, (cell, past)) in table.cells.iter_mut().zip(&mut cells).enumerate() {
                if held[t][c] {
                    let (from, values) = past.last.clone().expect("only released cells are held");
                    cell.values = Some(values);
                    cell.held_from = Some(from);
                } else if let Some(values) = &cell.values {
                    let set = contributors(t, c);
                    if !past.released_sets.contains(&set) {
                        past.released_sets.push(set);
                    }
                    past.last = Some((version, values.clone()));
                }
            }
            table.held_cells = held[t].iter().filter(|&&h| h).count();
            table.suppressed_cells -= table.held_cells;
            next.tables.push(TableHistory { name: spec.name.clone(), cells });
        }

        let positions = (0..intakes.len())
            .map(|i| {
                let tables = specs
                    .iter()
                    .enumerate()
                    .map(|(t, spec)| {
                        let peers = &release.tables[t];
                        let mine = &own[i].1.tables[t];
                        let others: Vec<&Tally> = own.iter().map(|(tallies, _)| &tallies[t]).collect();
                        let cells = peers
                            .cells
                            .iter()
                            .zip(&mine.cells)
                            .zip(&mut next.tables[t].cells)
                            .enumerate()
                            .map(|(cell, ((peer, own), past))| {
                                let given = &mut past.bands_given;
                                position_cell(spec, &others, (i, members[i]), cell, peer, own, given)
                            })
                            .collect();
                        PositionTable::beside(peers, cells)
                    })
                    .collect();
                OwnPosition { tables }
            })
            .collect();
        BenchmarkRelease { release, history: next, positions }
    }

    /// Release a benchmark version under differential privacy: every
    /// intake merged into one noisy release at the policy's ρ
    /// ([`Gate::release_dp`]), whose guarantee is per entity, whichever
    /// tenant it belongs to. No rule decides on tenant sets, so `history`
    /// comes back as it was (the subtraction rule is for exact releases),
    /// and no tenant gets a band (a rank among its peers' exact values).
    /// Each tenant's own values are its own data under the tenant rules,
    /// as in a threshold version.
    pub fn release_benchmark_dp(
        &self,
        intakes: &[TenantIntake],
        history: &ReleaseHistory,
        rng: &mut dyn CryptoRng,
    ) -> Result<BenchmarkRelease, DpError> {
        assert_eq!(self.scope(), Scope::Benchmark, "a benchmark release needs a benchmark gate");
        let release = self.release_dp(intakes, rng)?;
        let positions = intakes
            .iter()
            .map(|intake| {
                let (_, own) = self.own(intake);
                let tables = release
                    .tables
                    .iter()
                    .zip(&own.tables)
                    .map(|(peers, mine)| {
                        let no_bands = || vec![None; peers.statistics.len()];
                        let cells = peers.cells.iter().zip(&mine.cells);
                        PositionTable::beside(
                            peers,
                            cells.map(|(peer, own)| position(peer, own, no_bands())).collect(),
                        )
                    })
                    .collect();
                OwnPosition { tables }
            })
            .collect();
        Ok(BenchmarkRelease { release, history: history.clone(), positions })
    }

    /// One tenant's own release under the tenant rules, with its tallies.
    fn own(&self, intake: &TenantIntake) -> (Vec<Tally>, Release) {
        let (tallies, mut hidden) = self.primary_all(std::slice::from_ref(intake), Scope::Tenant);
        self.protect(&tallies, &mut hidden);
        let release = self.assemble(&tallies, &hidden, Scope::Tenant);
        (tallies, release)
    }
}

/// The history of `spec`'s table, if it is for the same table.
fn history_of<'h>(history: &'h ReleaseHistory, spec: &TableSpec, cells: usize) -> Option<&'h TableHistory> {
    history.tables.iter().find(|h| h.name == spec.name && h.cells.len() == cells)
}

/// How many tenants are in one sorted set and not the other.
fn symmetric_difference(a: &[u32], b: &[u32]) -> usize {
    let common = a.iter().filter(|m| b.binary_search(m).is_ok()).count();
    a.len() + b.len() - 2 * common
}

/// Tenant `me`'s view of one cell. `tallies` are every tenant's own tally of
/// the table.
#[allow(clippy::too_many_arguments)]
fn position_cell(
    spec: &TableSpec,
    tallies: &[&Tally],
    (me, member): (usize, u32),
    cell: usize,
    peer: &ReleasedCell,
    own: &ReleasedCell,
    given: &mut Vec<BandGiven>,
) -> PositionCell {
    let mut bands = vec![None; spec.statistics.len()];
    // Bands only next to a fresh peer value the tenant took part in, and an
    // own value the tenant rules release.
    if let (Some(peers), None, Some(mine)) = (&peer.values, peer.held_from, &own.values) {
        let scales = fixed_point_scales(spec);
        let others: Vec<Vec<f64>> = tallies
            .iter()
            .enumerate()
            .filter(|(i, tally)| *i != me && tally.entities[cell] > 0)
            .map(|(_, tally)| cell_values(spec, tally, cell, &scales))
            .collect();
        // A tenant whose own values changed while its peers' did not would
        // learn from a new band where they stand: probing with its own data
        // from version to version. It keeps no band until they change.
        let seen =
            BandGiven { member, peers: fingerprint(&others), own: fingerprint(std::slice::from_ref(mine)) };
        let earlier = given.iter().position(|g| g.member == member);
        if earlier.is_some_and(|e| given[e].peers == seen.peers && given[e].own != seen.own) {
            return position(peer, own, bands);
        }
        let n = others.len() + 1;
        for (s, statistic) in spec.statistics.iter().enumerate() {
            let own_value = mine[s];
            let above = others.iter().filter(|v| v[s] > own_value).count();
            bands[s] = rank_band(spec, statistic, n, above, own_value, peers[s]);
        }
        if bands.iter().any(Option::is_some) {
            match earlier {
                Some(e) => given[e] = seen,
                None => given.push(seen),
            }
        }
    }
    position(peer, own, bands)
}

/// A cell of a tenant's view.
fn position(peer: &ReleasedCell, own: &ReleasedCell, bands: Vec<Option<RankBand>>) -> PositionCell {
    PositionCell {
        key: peer.key.clone(),
        peers: peer.values.clone(),
        peer_intervals: peer.intervals.clone(),
        held_from: peer.held_from,
        own: own.values.clone(),
        bands,
    }
}

/// The band of a tenant with `above` of `n` contributors strictly above its
/// value `own`, where the cell's released value is `released`; `None` where
/// the band, the own value and the released value together would pin a peer.
fn rank_band(
    spec: &TableSpec,
    statistic: &Statistic,
    n: usize,
    above: usize,
    own: f64,
    released: f64,
) -> Option<RankBand> {
    // Quintiles from ten tenants, halves from four: at least two tenants
    // per band, so a band never names one rank, and the number of bands
    // tells no more about the cell's tenants than that.
    let of = match n {
        10.. => MAX_BANDS,
        4..=9 => 2,
        _ => return None,
    };
    let band = above * of / n;
    // The ranks this band stands for: lo..=hi peers above the tenant.
    let lo = (band * n).div_ceil(of);
    let hi = (((band + 1) * n).div_ceil(of) - 1).min(n - 1);
    // Counts and sums add up across tenants: the peers' total is known to
    // the tenant, and with it the order could corner the peers.
    // Room is a tenth of the peers' mean (a count at least one): a band
    // may confine a peer to no less.
    let mean = (released - own).abs() / (n - 1) as f64;
    let (floor, unit) = match statistic {
        Statistic::Count => (Some(1.0), (mean * ROOM).max(1.0)),
        Statistic::Sum(m) => {
            let lower = spec.measure_index(m).map_or(f64::NEG_INFINITY, |i| spec.measures[i].lower);
            ((lower >= 0.0).then_some(0.0), (mean.max(own.abs()) * ROOM).max(f64::MIN_POSITIVE))
        }
        Statistic::Mean(_) | Statistic::Ratio(..) => {
            return Some(RankBand { band: band as u32 + 1, of: of as u32 });
        }
    };
    // The tenant cannot tell which of these rank counts is true: the band
    // is safe when one of them leaves every peer room to move by a unit,
    // above the least the peers can add up to and below the tenant's value.
    let peers = (n - 1) as f64;
    let rest = released - own;
    let roomy = |a: usize| {
        let below = peers - a as f64;
        let from_below = floor.is_none_or(|floor| {
            rest >= a as f64 * own + below * floor
                && rest - (a as f64 * (own + unit) + below * floor) >= peers * unit
                && (a == n - 1 || own - floor >= unit)
        });
        from_below && (a > 0 || below * own - rest >= peers * unit)
    };
    if !(lo..=hi).any(roomy) {
        return None;
    }
    Some(RankBand { band: band as u32 + 1, of: of as u32 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Contributions, IssuedEntities, Policy};

    /// Fuel by region, count and sum, with the regions' total.
    fn spec() -> TableSpec {
        let mut spec = crate::release::tests::spec();
        spec.statistics.truncate(2);
        spec.margins = true;
        spec
    }

    fn gate() -> Gate {
        Gate::new(vec![spec()], Policy::default(), Scope::Benchmark).unwrap()
    }

    /// A tenant with `counts[r]` drivers in region `r`, each of `litres`.
    fn tenant(gate: &Gate, seed: u64, counts: &[usize], litres: f64) -> TenantIntake {
        let mut issued = IssuedEntities::new();
        let mut intake = gate.intake();
        let (mut entities, mut codes) = (Vec::new(), Vec::new());
        for (region, &count) in counts.iter().enumerate() {
            for i in 0..count {
                let pseudonym = seed << 32 | (region * 1000 + i) as u64;
                issued.issue(pseudonym);
                entities.push(pseudonym);
                codes.push(region as u32);
            }
        }
        let values = vec![litres; entities.len()];
        let batch = Contributions { entities: &entities, dimensions: &[&codes], measures: &[&values] };
        intake.contribute(0, &issued, &batch).unwrap();
        intake
    }

    fn run(
        members: &[u32],
        counts: &[[usize; 3]],
        history: &ReleaseHistory,
        version: u64,
    ) -> BenchmarkRelease {
        let gate = gate();
        let intakes: Vec<TenantIntake> =
            members.iter().zip(counts).map(|(&m, c)| tenant(&gate, u64::from(m), c, 10.0)).collect();
        gate.release_benchmark(&intakes, members, history, version)
    }

    fn values(release: &Release, cell: usize) -> (Option<Vec<f64>>, Option<u64>) {
        let cell = &release.tables[0].cells[cell];
        (cell.values.clone(), cell.held_from)
    }

    #[test]
    fn a_tenant_leaving_cannot_be_subtracted_out() {
        // Six tenants with 4 drivers in each region.
        let six = [[4, 4, 4]; 6];
        let first = run(&[0, 1, 2, 3, 4, 5], &six, &ReleaseHistory::default(), 1);
        assert_eq!(values(&first.release, 0), (Some(vec![24.0, 240.0]), None));

        // Tenant 5 leaves: every cell it was in changes by one tenant.
        let second = run(&[0, 1, 2, 3, 4], &six[..5], &first.history, 2);
        for cell in 0..4 {
            let (values, from) = values(&second.release, cell);
            assert_eq!(from, Some(1), "cell {cell} is held");
            assert_eq!(values, first.release.tables[0].cells[cell].values, "the previous version stands");
        }
        let table = &second.release.tables[0];
        assert_eq!((table.held_cells, table.suppressed_cells), (4, 0));
        // Held cells stay held while the set stays close to a released one.
        let third = run(&[0, 1, 2, 3, 4], &six[..5], &second.history, 3);
        assert_eq!(values(&third.release, 0).1, Some(1));

        // Five tenants join: the set now differs from version 1's by six
        // tenants and from nothing released by fewer than t, so it is new.
        let members = [0, 1, 2, 3, 4, 6, 7, 8, 9, 10];
        let fourth = run(&members, &[[4, 4, 4]; 10], &third.history, 4);
        assert_eq!(values(&fourth.release, 0), (Some(vec![40.0, 400.0]), None));
        // Version 1's set is remembered too: coming back to one tenant of it
        // is caught even after another version in between.
        let fifth = run(&[0, 1, 2, 3, 4, 5, 6], &[[4, 4, 4]; 7], &fourth.history, 5);
        assert_eq!(values(&fifth.release, 0).1, Some(4), "differs from version 1 by one tenant");
    }

    #[test]
    fn a_close_set_without_a_value_of_its_own_is_suppressed() {
        // Another release of the same tables had tenants 0 to 5; this
        // benchmark has none yet, and tenant 5 is not in it.
        let sibling = run(&[0, 1, 2, 3, 4, 5], &[[4, 4, 4]; 6], &ReleaseHistory::default(), 1);
        let mut history = sibling.history.clone();
        history.tables[0].cells.iter_mut().for_each(|c| c.last = None);
        let first = run(&[0, 1, 2, 3, 4], &[[4, 4, 4]; 5], &history, 1);
        let table = &first.release.tables[0];
        assert!(table.cells.iter().all(|c| c.values.is_none() && c.held_from.is_none()), "{table:?}");
        assert_eq!((table.held_cells, table.suppressed_cells), (0, 4));
    }

    #[test]
    fn a_held_cell_holds_its_whole_table() {
        // Tenant 5 is only in north: north and the total change by one
        // tenant, south and east do not.
        let mut counts = vec![[4, 4, 4]; 5];
        counts.push([4, 0, 0]);
        let first = run(&[0, 1, 2, 3, 4, 5], &counts, &ReleaseHistory::default(), 1);
        assert!(first.release.tables[0].cells.iter().all(|c| c.values.is_some()));
        let second = run(&[0, 1, 2, 3, 4], &counts[..5], &first.history, 2);
        // Fresh south and east would show the change was in north, and
        // with version 1's south, the new total would give north away.
        let table = &second.release.tables[0];
        for (now, before) in table.cells.iter().zip(&first.release.tables[0].cells) {
            assert_eq!((now.held_from, &now.values), (Some(1), &before.values), "{now:?}");
        }
        assert_eq!((table.held_cells, table.suppressed_cells), (4, 0));
    }

    #[test]
    fn an_unchanged_complement_cannot_close_a_line_around_a_held_cell() {
        // The reviewer's case: north, south and east each of five tenants,
        // released. Then one tenant joins south with a few drivers, and five
        // join north: south is close, north is not. Releasing north and the
        // total fresh beside a hidden, unchanged east would give the joiner
        // away: total - north - south(v1) - east(v1).
        let mut counts: Vec<[usize; 3]> = (0..15)
            .map(|i| {
                [usize::from(i < 5) * 4, usize::from((5..10).contains(&i)) * 4, usize::from(i >= 10) * 4]
            })
            .collect();
        let members: Vec<u32> = (0..15).collect();
        let first = run(&members, &counts, &ReleaseHistory::default(), 1);
        assert!(first.release.tables[0].cells.iter().all(|c| c.values.is_some()));
        counts.push([0, 3, 0]);
        counts.extend([[4, 0, 0]; 5]);
        let members: Vec<u32> = (0..21).collect();
        let second = run(&members, &counts, &first.history, 2);
        for cell in &second.release.tables[0].cells {
            assert!(cell.values.is_none() || cell.held_from == Some(1), "nothing fresh: {cell:?}");
        }
    }

    #[test]
    fn a_new_cell_and_an_unchanged_set_are_released() {
        let first = run(&[0, 1, 2, 3, 4], &[[4, 4, 0]; 5], &ReleaseHistory::default(), 1);
        let second = run(&[0, 1, 2, 3, 4], &[[5, 4, 4]; 5], &first.history, 2);
        assert_eq!(values(&second.release, 0), (Some(vec![25.0, 250.0]), None), "same set, new data");
        assert_eq!(values(&second.release, 2), (Some(vec![20.0, 200.0]), None), "first release of east");
    }

    #[test]
    fn own_values_follow_the_tenant_rules_and_bands_need_enough_tenants() {
        // Ten tenants: tenant 0 has 12 drivers in north (its own value is
        // released), 3 in south (not: fewer than k of its own) and 11 in
        // east (hidden with south, or its total would give south away).
        let mut counts = vec![[12, 3, 11]];
        counts.extend((1..10).map(|i| [i + 5, 6, 0]));
        let members: Vec<u32> = (0..10).collect();
        let release = run(&members, &counts, &ReleaseHistory::default(), 1);
        let mine = &release.positions[0].tables[0].cells;
        assert_eq!(mine[0].own, Some(vec![12.0, 120.0]));
        assert_eq!(mine[0].peers, release.release.tables[0].cells[0].values);
        assert_eq!(mine[1].own, None, "3 of its own drivers");
        assert_eq!(mine[1].bands, vec![None, None]);
        // North: 6..=14 and its 12: two peers above it, in quintiles.
        assert_eq!(mine[0].bands[0], Some(RankBand { band: 2, of: 5 }));

        // Five tenants cut into halves only.
        let release = run(&members[..5], &counts[..5], &ReleaseHistory::default(), 1);
        assert_eq!(release.positions[0].tables[0].cells[0].bands[0].map(|b| b.of), Some(2));
    }

    #[test]
    fn a_tenant_cannot_probe_its_peers_with_its_own_data() {
        // Ten tenants; tenant 0 tries other counts of its own from version
        // to version while its peers stay the same.
        let counts = |own: usize| {
            let mut counts = vec![[own, 0, 0]];
            counts.extend((1..10).map(|i| [10 + 2 * i, 0, 0]));
            counts
        };
        let members: Vec<u32> = (0..10).collect();
        let band = |release: &BenchmarkRelease| release.positions[0].tables[0].cells[0].bands[0];
        let first = run(&members, &counts(20), &ReleaseHistory::default(), 1);
        assert!(band(&first).is_some());
        let probe = run(&members, &counts(25), &first.history, 2);
        assert_eq!(band(&probe), None, "its own data changed, its peers' did not");
        let back = run(&members, &counts(20), &probe.history, 3);
        assert_eq!(band(&back), band(&first), "what it saw before, it may see again");
        // Once a peer changes, a band is given again.
        let mut moved = counts(25);
        moved[5][0] += 3;
        assert!(band(&run(&members, &moved, &back.history, 4)).is_some());
    }

    #[test]
    fn a_band_that_would_corner_the_peers_is_withheld() {
        // Own 10; peers 11, 11, 11 and 1 add up to 34: with "at least three
        // peers above me", the peers must be exactly that.
        let counts = [[10, 0, 0], [11, 0, 0], [11, 0, 0], [11, 0, 0], [1, 0, 0]];
        let release = run(&[0, 1, 2, 3, 4], &counts, &ReleaseHistory::default(), 1);
        assert!(release.release.tables[0].cells[0].values.is_some());
        assert_eq!(release.positions[0].tables[0].cells[0].bands[0], None);
    }

    /// Every multiset of `peers` counts (each at least 1) adding up to
    /// `rest` with a number of them above `own` that gives `band`.
    fn consistent(peers: usize, rest: usize, own: usize, band: RankBand) -> Vec<Vec<usize>> {
        fn walk(left: usize, rest: usize, min: usize, current: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if left == 0 {
                if rest == 0 {
                    out.push(current.clone());
                }
                return;
            }
            for v in min..=rest / left {
                current.push(v);
                walk(left - 1, rest - v, v, current, out);
                current.pop();
            }
        }
        let mut all = Vec::new();
        walk(peers, rest, 1, &mut Vec::new(), &mut all);
        let n = peers + 1;
        all.retain(|set| {
            let above = set.iter().filter(|&&v| v > own).count();
            above * band.of as usize / n + 1 == band.band as usize
        });
        all
    }

    #[test]
    fn what_one_tenant_sees_never_pins_a_peer() {
        // Generated benchmarks of 5 to 8 small tenants. For every cell where
        // a tenant gets a count band, try every peer configuration that
        // matches what it sees: each peer rank must keep two possible values.
        let mut bands_seen = 0;
        for seed in 0u64..40 {
            let n = 5 + (seed % 4) as usize;
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = |m: u64| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                1 + (state % m) as usize
            };
            let counts: Vec<[usize; 3]> = (0..n).map(|_| [next(6), next(3), 0]).collect();
            let members: Vec<u32> = (0..n as u32).collect();
            // k = 2 so most small tenants' own values are released.
            let gate =
                Gate::new(vec![spec()], Policy { min_entities: 2, ..Policy::default() }, Scope::Benchmark)
                    .unwrap();
            let intakes: Vec<TenantIntake> =
                members.iter().zip(&counts).map(|(&m, c)| tenant(&gate, u64::from(m), c, 10.0)).collect();
            let release = gate.release_benchmark(&intakes, &members, &ReleaseHistory::default(), 1);
            for (me, position) in release.positions.iter().enumerate() {
                for (cell, seen) in position.tables[0].cells.iter().enumerate() {
                    let Some(band) = seen.bands[0] else { continue };
                    bands_seen += 1;
                    let own = seen.own.as_ref().unwrap()[0] as usize;
                    let total = seen.peers.as_ref().unwrap()[0] as usize;
                    let peers = band_tenants(&counts, cell) - 1;
                    let worlds = consistent(peers, total - own, own, band);
                    let mut truth: Vec<usize> = counts
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| i != me)
                        .map(|(_, c)| tenant_count(c, cell))
                        .filter(|&c| c > 0)
                        .collect();
                    truth.sort_unstable();
                    assert!(worlds.contains(&truth), "the truth is one of the worlds");
                    for rank in 0..peers {
                        let first = worlds[0][rank];
                        assert!(
                            worlds.iter().any(|w| w[rank] != first),
                            "seed {seed}, tenant {me}, cell {cell}: peer rank {rank} is pinned to {first}"
                        );
                    }
                }
            }
        }
        assert!(bands_seen > 100, "the test saw {bands_seen} bands");
    }

    /// A tenant's drivers in `cell` (3 is the total).
    fn tenant_count(counts: &[usize; 3], cell: usize) -> usize {
        if cell == 3 { counts.iter().sum() } else { counts[cell] }
    }

    /// Tenants with drivers in `cell`.
    fn band_tenants(counts: &[[usize; 3]], cell: usize) -> usize {
        counts.iter().filter(|c| tenant_count(c, cell) > 0).count()
    }

    #[test]
    fn a_tenants_view_depends_on_its_peers_only_through_the_release() {
        // Two worlds: peers 1 and 2 trade drivers, so every released
        // aggregate and tenant 0's rank are the same. Tenant 0 sees the same.
        let world = |a: usize, b: usize| {
            let counts = [[12, 5, 0], [a, 5, 0], [b, 5, 0], [20, 5, 0], [21, 5, 0], [22, 5, 0]];
            run(&[0, 1, 2, 3, 4, 5], &counts, &ReleaseHistory::default(), 1)
        };
        let (one, two) = (world(14, 18), world(16, 16));
        assert_eq!(one.release, two.release);
        assert_eq!(one.positions[0], two.positions[0]);
        assert_ne!(one.positions[1], two.positions[1], "the peers themselves see the difference");
    }

    #[test]
    fn a_dp_version_noises_every_cell_and_keeps_no_tenant_sets() {
        use rand_010::SeedableRng;
        let dp =
            Policy { privacy: crate::Privacy::Dp, isolation: crate::Isolation::Entity, ..Policy::default() };
        let dp = Gate::new(vec![spec()], dp, Scope::Benchmark).unwrap();
        let threshold = gate();
        let members = [0, 1, 2, 3, 4, 5];
        let counts = [[12, 12, 0], [12, 3, 0], [12, 12, 0], [12, 12, 0], [12, 12, 0], [12, 12, 0]];
        let intakes = |gate: &Gate| -> Vec<TenantIntake> {
            members.iter().zip(&counts).map(|(&m, c)| tenant(gate, u64::from(m), c, 10.0)).collect()
        };
        let exact =
            threshold.release_benchmark(&intakes(&threshold), &members, &ReleaseHistory::default(), 1);
        let mut rng = rand_010::rngs::ChaCha20Rng::seed_from_u64(7);
        let noisy = dp.release_benchmark_dp(&intakes(&dp), &exact.history, &mut rng).unwrap();

        // Every cell, the empty east and the total too, with its interval;
        // the history is the threshold versions' only.
        let table = &noisy.release.tables[0];
        assert_eq!(noisy.release.dp.as_ref().map(|d| d.rho_nanos), Some(24_300_000));
        assert_eq!((table.cells.len(), table.suppressed_cells, table.held_cells), (4, 0, 0));
        assert!(
            table.cells.iter().all(|c| c.values.is_some() && c.intervals.is_some() && c.held_from.is_none())
        );
        assert_eq!(noisy.history, exact.history);
        let (north, sd) =
            (table.cells[0].values.as_ref().unwrap()[0], table.noise_sd.as_ref().unwrap()[0].unwrap());
        assert!((north - 72.0).abs() < 6.0 * sd, "72 drivers ± noise of sd {sd}: {north}");

        // Each tenant: the noisy peer values with their intervals, its own
        // exact values under the tenant rules as in a threshold version,
        // and no band.
        for (mine, theirs) in noisy.positions.iter().zip(&exact.positions) {
            for ((cell, peer), exact) in
                mine.tables[0].cells.iter().zip(&table.cells).zip(&theirs.tables[0].cells)
            {
                assert_eq!((&cell.peers, &cell.peer_intervals), (&peer.values, &peer.intervals));
                assert_eq!(cell.own, exact.own);
                assert!(cell.bands.iter().all(Option::is_none));
            }
        }
        assert_eq!(noisy.positions[1].tables[0].cells[1].own, None, "3 drivers: below its own k");

        // A tenant leaving holds nothing: no rule decides on tenant sets.
        let five = dp.release_benchmark_dp(&intakes(&dp)[..5], &exact.history, &mut rng).unwrap();
        assert!(five.release.tables[0].cells.iter().all(|c| c.held_from.is_none() && c.values.is_some()));
    }
}
