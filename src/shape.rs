//! A tensor's dimensions, held inline: every op makes an output tensor, and a shape on the heap
//! would be one more allocation per op (hundreds per U-Net forward), so shapes of up to
//! [`INLINE_RANK`] dimensions (every shape this crate makes) live inside the tensor, and only
//! longer ones spill to the heap.

use std::ops::{Deref, DerefMut};

use smallvec::SmallVec;

/// Ranks held without an allocation.
pub const INLINE_RANK: usize = 6;

/// The dimensions of a tensor, outermost first. It dereferences to `[usize]`, and converts from
/// arrays, slices and vectors, so `Tensor::new([2, 3], ..)`, `Tensor::new(vec![2, 3], ..)` and
/// `Tensor::new(other.shape(), ..)` all work.
///
/// ```
/// use freelunch::Shape;
///
/// let mut s = Shape::from([2, 4, 8]);
/// s[2] = 16;
/// s.push(3);
/// assert_eq!(&s[..], &[2, 4, 16, 3]);
/// assert_eq!(s, [2, 4, 16, 3]);
/// assert_eq!(format!("{s:?}"), "[2, 4, 16, 3]");
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shape(SmallVec<[usize; INLINE_RANK]>);

impl Shape {
    /// A shape of no dimensions (a scalar's).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a dimension.
    pub fn push(&mut self, dim: usize) {
        self.0.push(dim);
    }

    /// The same shape with its last dimension `dim` (one more dimension when it has none).
    pub fn with_last(mut self, dim: usize) -> Self {
        match self.0.last_mut() {
            Some(last) => *last = dim,
            None => self.0.push(dim),
        }
        self
    }

    /// The dimensions as a vector.
    pub fn to_vec(&self) -> Vec<usize> {
        self.0.to_vec()
    }
}

impl Deref for Shape {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        &self.0
    }
}

impl DerefMut for Shape {
    fn deref_mut(&mut self) -> &mut [usize] {
        &mut self.0
    }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Self {
        Shape(SmallVec::from_slice(&dims))
    }
}

impl<const N: usize> From<&[usize; N]> for Shape {
    fn from(dims: &[usize; N]) -> Self {
        Shape(SmallVec::from_slice(dims))
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Self {
        Shape(SmallVec::from_slice(dims))
    }
}

impl From<&mut [usize]> for Shape {
    fn from(dims: &mut [usize]) -> Self {
        Shape(SmallVec::from_slice(dims))
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Self {
        Shape(SmallVec::from_slice(&dims))
    }
}

impl From<&Vec<usize>> for Shape {
    fn from(dims: &Vec<usize>) -> Self {
        Shape(SmallVec::from_slice(dims))
    }
}

impl From<&Shape> for Shape {
    fn from(dims: &Shape) -> Self {
        dims.clone()
    }
}

impl From<Shape> for Vec<usize> {
    fn from(dims: Shape) -> Self {
        dims.0.into_vec()
    }
}

impl FromIterator<usize> for Shape {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        Shape(iter.into_iter().collect())
    }
}

impl PartialEq<[usize]> for Shape {
    fn eq(&self, other: &[usize]) -> bool {
        self[..] == *other
    }
}

impl PartialEq<&[usize]> for Shape {
    fn eq(&self, other: &&[usize]) -> bool {
        self[..] == **other
    }
}

impl<const N: usize> PartialEq<[usize; N]> for Shape {
    fn eq(&self, other: &[usize; N]) -> bool {
        self[..] == other[..]
    }
}

impl PartialEq<Vec<usize>> for Shape {
    fn eq(&self, other: &Vec<usize>) -> bool {
        self[..] == other[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_up_to_the_inline_rank_are_inline_and_longer_ones_still_work() {
        let s = Shape::from([1; INLINE_RANK]);
        assert!(!s.0.spilled());
        let long: Shape = (0..INLINE_RANK + 3).collect();
        assert!(long.0.spilled());
        assert_eq!(long.to_vec(), (0..INLINE_RANK + 3).collect::<Vec<_>>());
        assert_eq!(Shape::new().with_last(5), [5]);
        assert_eq!(Shape::from(vec![2, 3]).with_last(7), [2, 7]);
    }
}
