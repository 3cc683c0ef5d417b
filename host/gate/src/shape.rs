//! The cells of a released table: the interior cells of its domain and, when
//! the table asks for margins, the totals.
//!
//! With margins every dimension gets one extra code, `total` (its last), so a
//! cell whose code is `total` in some dimensions is the sum over those
//! dimensions: per-dimension totals, every other marginal, and the grand
//! total all have a place in one row-major index space.

/// The index space of one table's released cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Domain size of each dimension.
    pub sizes: Vec<usize>,
    /// Whether the `total` code exists.
    pub margins: bool,
}

impl Shape {
    /// The released cells of a table.
    pub fn of(spec: &crate::TableSpec) -> Shape {
        Shape { sizes: spec.dimensions.iter().map(|d| d.domain.len()).collect(), margins: spec.margins }
    }

    /// Codes per dimension, `total` included.
    pub fn radix(&self, d: usize) -> usize {
        self.sizes[d] + usize::from(self.margins)
    }

    /// How many cells are released.
    pub fn count(&self) -> usize {
        (0..self.sizes.len()).map(|d| self.radix(d)).product()
    }

    /// The `total` code of dimension `d` (only meaningful with margins).
    pub fn total(&self, d: usize) -> usize {
        self.sizes[d]
    }

    /// Index step of dimension `d`.
    pub fn stride(&self, d: usize) -> usize {
        (d + 1..self.sizes.len()).map(|e| self.radix(e)).product()
    }

    /// The codes of a cell.
    pub fn codes(&self, mut cell: usize, codes: &mut Vec<usize>) {
        codes.clear();
        codes.resize(self.sizes.len(), 0);
        for d in (0..self.sizes.len()).rev() {
            codes[d] = cell % self.radix(d);
            cell /= self.radix(d);
        }
    }

    /// The cell of some codes.
    pub fn index(&self, codes: &[usize]) -> usize {
        codes.iter().enumerate().fold(0, |cell, (d, &code)| cell * self.radix(d) + code)
    }

    /// The released cell of an accumulator's interior cell index (which has
    /// no `total` codes).
    pub fn cell_of_interior(&self, mut interior: usize) -> usize {
        let mut cell = 0;
        let mut step = 1;
        for d in (0..self.sizes.len()).rev() {
            cell += (interior % self.sizes[d]) * step;
            interior /= self.sizes[d];
            step *= self.radix(d);
        }
        cell
    }

    /// Whether a cell has no `total` code.
    pub fn is_interior(&self, codes: &[usize]) -> bool {
        !self.margins || codes.iter().zip(&self.sizes).all(|(&c, &s)| c < s)
    }

    /// Every released cell that counts `cell` (an interior cell): itself and,
    /// with margins, each cell that replaces some of its codes by `total`.
    pub fn covering(&self, cell: usize, out: &mut Vec<usize>) {
        out.clear();
        out.push(cell);
        if !self.margins {
            return;
        }
        let mut codes = Vec::new();
        self.codes(cell, &mut codes);
        for (d, &code) in codes.iter().enumerate() {
            let shift = (self.total(d) - code) * self.stride(d);
            for i in 0..out.len() {
                out.push(out[i] + shift);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_extend_each_dimension() {
        let shape = Shape { sizes: vec![3, 2], margins: true };
        assert_eq!(shape.count(), 12);
        let interior = 2 * 2 + 1; // codes (2, 1)
        let cell = shape.cell_of_interior(interior);
        assert_eq!(cell, 2 * 3 + 1);
        let mut covering = Vec::new();
        shape.covering(cell, &mut covering);
        covering.sort();
        // (2,1), (2,total), (total,1), (total,total)
        assert_eq!(covering, vec![7, 8, 10, 11]);
        let mut codes = Vec::new();
        shape.codes(11, &mut codes);
        assert_eq!(codes, vec![3, 2]);
        assert!(!shape.is_interior(&codes));
        assert_eq!(shape.index(&codes), 11);
    }

    #[test]
    fn without_margins_cells_are_the_interior() {
        let shape = Shape { sizes: vec![3, 2], margins: false };
        assert_eq!(shape.count(), 6);
        assert_eq!(shape.cell_of_interior(5), 5);
        let mut covering = Vec::new();
        shape.covering(5, &mut covering);
        assert_eq!(covering, vec![5]);
    }
}
