//! A dense, row-major f32 tensor: the currency of the CPU backend and of the public API
//! (NCHW for images, like diffusers).

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor over `data`; fails when the element count does not match the shape.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Result<Self> {
        let shape = shape.into();
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::Msg(format!(
                "tensor of shape {shape:?} needs {numel} elements, got {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// Internal constructor for shapes the caller has already checked.
    pub(crate) fn from_parts(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    pub fn zeros(shape: impl Into<Vec<usize>>) -> Self {
        let shape = shape.into();
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// Standard-normal entries from a fixed seed (tests, benches, random-weight models).
    pub fn randn(shape: impl Into<Vec<usize>>, seed: u64) -> Self {
        let shape = shape.into();
        let n = shape.iter().product();
        let mut rng = crate::rng::Rng::new(seed);
        let data = (0..n).map(|_| rng.normal()).collect();
        Tensor { shape, data }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(self, shape: impl Into<Vec<usize>>) -> Result<Self> {
        Tensor::new(shape, self.data)
    }

    /// (B, C, H, W) of a rank-4 tensor, or an error naming `what`.
    pub fn dims4(&self, what: &str) -> Result<(usize, usize, usize, usize)> {
        match self.shape[..] {
            [b, c, h, w] => Ok((b, c, h, w)),
            _ => Err(Error::input(
                what,
                format!(
                    "expected a rank-4 [B,C,H,W] tensor, got shape {:?}",
                    self.shape
                ),
            )),
        }
    }

    /// Relative L2 distance ‖self − other‖ / ‖other‖ (NaN anywhere gives NaN).
    pub fn rel_l2(&self, reference: &Tensor) -> f64 {
        assert_eq!(self.shape, reference.shape, "rel_l2 on different shapes");
        let (mut num, mut den) = (0f64, 0f64);
        for (&a, &b) in self.data.iter().zip(&reference.data) {
            let d = a as f64 - b as f64;
            num += d * d;
            den += (b as f64) * (b as f64);
        }
        (num / den).sqrt()
    }
}
