//! Device tensors. Storage is `dtype` elements in the backend's layout: images NHWC (the shape
//! says `[B, C, H, W]`), token sequences `[B, N, C]` and vectors `[B, C]` row-major. Buffers
//! are shared (`Arc`), so the image ↔ token views and clones cost nothing.

use std::sync::Arc;

use cudarc::driver::CudaSlice;

use crate::dtype::DType;

/// A tensor in device memory: `dtype` elements in the backend's layout (see the module docs)
/// under a semantic shape.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    pub(crate) buf: Arc<CudaSlice<u8>>,
    pub(crate) shape: crate::Shape,
    pub(crate) dtype: DType,
}

impl GpuTensor {
    /// The semantic shape (images `[B, C, H, W]`, stored NHWC).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type of the storage.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The same buffer under another semantic shape of as many elements.
    pub(crate) fn view(&self, shape: impl Into<crate::Shape>) -> GpuTensor {
        let shape = shape.into();
        debug_assert_eq!(shape.iter().product::<usize>(), self.numel());
        GpuTensor {
            buf: self.buf.clone(),
            shape,
            dtype: self.dtype,
        }
    }
}
