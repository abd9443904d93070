//! Parameter-free activation layers: `ReLU`, `LeakyReLU`, `Tanh` and `Sigmoid`.

use std::any::Any;

use ndarray::{ArcArrayD, ArrayD, ArrayViewD};

use super::{Layer, check_grad_shape, not_run};
use crate::error::Result;
use crate::limits::try_to_owned;
use crate::ops::{
    leaky_relu_grad_value, leaky_relu_value, map_array, map_slice, relu_grad_value, relu_value,
    sigmoid_grad_value, sigmoid_value, tanh_grad_value, tanh_value, update_array,
    update_array_with, zip_map_array,
};

/// What an element-wise activation keeps between forward and backward.
///
/// `values` is the last forward's input, or its output when that decides the gradient
/// just as well (ReLU: `x <= 0` exactly when `relu(x) <= 0`). Keeping the output lets
/// [`Layer::forward_shared`] compute in place on an input nobody else holds, and keep
/// one buffer instead of two. `spare` is the previous output after
/// [`Layer::clear_saved`]: the next forward writes over it when nobody else holds it,
/// instead of allocating (and page-faulting) a new one.
#[derive(Debug, Clone, Default)]
struct Saved {
    values: Option<ArcArrayD<f32>>,
    spare: Option<ArcArrayD<f32>>,
}

impl Saved {
    fn clear(&mut self) {
        if let Some(v) = self.values.take() {
            self.spare = Some(v);
        }
    }

    /// Forward through `f` on the view path: a new output, and a copy of the input kept.
    fn forward_view(
        &mut self,
        op: &'static str,
        x: ArrayViewD<'_, f32>,
        f: impl Fn(f32) -> f32 + Sync + Send,
    ) -> Result<ArrayD<f32>> {
        if let Some(b) = self.spare.take() {
            crate::buffers::give_shared(b);
        }
        self.values = None;
        let y = map_array(op, x.view(), f)?;
        let kept = try_to_owned(op, x.view(), || {
            format!("the copy of the input kept for backward, x {:?}", x.shape())
        })?;
        self.values = Some(kept.into_shared());
        Ok(y)
    }

    /// Forward through `f` on the view path, keeping a copy of the output (for the
    /// activations whose backward reads the output: tanh, sigmoid).
    fn forward_view_keep_output(
        &mut self,
        op: &'static str,
        x: ArrayViewD<'_, f32>,
        f: impl Fn(f32) -> f32 + Sync + Send,
    ) -> Result<ArrayD<f32>> {
        if let Some(b) = self.spare.take() {
            crate::buffers::give_shared(b);
        }
        self.values = None;
        let y = map_array(op, x.view(), f)?;
        let kept = try_to_owned(op, y.view(), || {
            format!(
                "the copy of the output kept for backward, y {:?}",
                y.shape()
            )
        })?;
        self.values = Some(kept.into_shared());
        Ok(y)
    }

    /// Forward through `f` on a shared input, keeping the output (`f` must be such that
    /// the output decides the gradient).
    fn forward_keep_output(
        &mut self,
        op: &'static str,
        x: ArcArrayD<f32>,
        f: impl Fn(f32) -> f32 + Sync + Send,
    ) -> Result<ArcArrayD<f32>> {
        let spare = self.spare.take().or_else(|| self.values.take());
        self.values = None;
        let y = if x.is_unique() && x.as_slice_memory_order().is_some() {
            // Nobody else sees `x`: overwrite it (in whatever layout it has, channels-last
            // included), and let another op have the spare.
            if let Some(b) = spare {
                crate::buffers::give_shared(b);
            }
            let mut y = x.into_owned();
            update_array(y.view_mut(), f);
            y
        } else {
            let standard = x.is_standard_layout();
            let reuse = spare
                .filter(|b| b.is_unique() && b.len() == x.len())
                .and_then(|b| match standard {
                    true => b
                        .is_standard_layout()
                        .then(|| b.into_owned().into_shape_with_order(x.raw_dim()).ok())
                        .flatten(),
                    // Another contiguous layout (channels-last): the spare must have it.
                    false => (b.shape() == x.shape() && b.strides() == x.strides())
                        .then(|| b.into_owned()),
                });
            match (reuse, x.as_slice_memory_order()) {
                (Some(mut y), Some(xs)) => {
                    let ys = y.as_slice_memory_order_mut().expect("contiguous as x is");
                    map_slice(xs, ys, f);
                    y
                }
                _ => map_array(op, x.view(), f)?,
            }
        };
        let y = y.into_shared();
        self.values = Some(y.clone());
        Ok(y)
    }

    /// Forward through `f` on a shared input, keeping the input (no copy).
    fn forward_keep_input(
        &mut self,
        op: &'static str,
        x: ArcArrayD<f32>,
        f: impl Fn(f32) -> f32 + Sync + Send,
    ) -> Result<ArcArrayD<f32>> {
        if let Some(b) = self.spare.take() {
            crate::buffers::give_shared(b);
        }
        self.values = None;
        let y = map_array(op, x.view(), f)?.into_shared();
        self.values = Some(x);
        Ok(y)
    }

    fn values(&self, op: &'static str, grad: &[usize]) -> Result<&ArcArrayD<f32>> {
        let v = self.values.as_ref().ok_or_else(|| not_run(op))?;
        check_grad_shape(op, grad, v.shape())?;
        Ok(v)
    }
}

/// `nn.ReLU`: `max(x, 0)` on any shape (NaN stays NaN). Keeps its last input, or in a
/// [`super::Sequential`] its output (which gives the same gradient mask without a copy),
/// for backward.
#[derive(Debug, Clone, Default)]
pub struct Relu {
    saved: Saved,
}

impl Relu {
    /// A ReLU layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Relu {
    fn name(&self) -> &'static str {
        "ReLU"
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.saved.forward_view("ReLU", x, relu_value)
    }

    fn forward_shared(&mut self, x: ArcArrayD<f32>) -> Result<ArcArrayD<f32>> {
        self.saved.forward_keep_output("ReLU", x, relu_value)
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let v = self.saved.values("ReLU", grad_out.shape())?;
        zip_map_array("ReLU", v.view(), grad_out, relu_grad_value)
    }

    fn backward_owned(&mut self, mut grad_out: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let v = self.saved.values("ReLU", grad_out.shape())?;
        update_array_with(grad_out.view_mut(), v.view(), relu_grad_value);
        Ok(grad_out)
    }

    fn clear_saved(&mut self) {
        self.saved.clear();
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// `nn.LeakyReLU(negative_slope)`: `x` where `x > 0`, else `negative_slope * x`. Any
/// slope works, including 0 (ReLU) and slopes above 1 (e.g. `sqrt 5`). Keeps its last
/// input, or in a [`super::Sequential`] with a slope that is not negative its output
/// (`x > 0` exactly when the output is), for backward.
#[derive(Debug, Clone)]
pub struct LeakyRelu {
    negative_slope: f32,
    saved: Saved,
}

impl Default for LeakyRelu {
    /// PyTorch's default slope, 0.01.
    fn default() -> Self {
        Self::new(0.01)
    }
}

impl LeakyRelu {
    /// A leaky ReLU with the given negative slope.
    pub fn new(negative_slope: f32) -> Self {
        LeakyRelu {
            negative_slope,
            saved: Saved::default(),
        }
    }

    /// The negative slope.
    pub fn negative_slope(&self) -> f32 {
        self.negative_slope
    }
}

impl Layer for LeakyRelu {
    fn name(&self) -> &'static str {
        "LeakyReLU"
    }

    fn describe(&self) -> String {
        format!("LeakyReLU(negative_slope={})", self.negative_slope)
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let s = self.negative_slope;
        self.saved
            .forward_view("LeakyReLU", x, |v| leaky_relu_value(v, s))
    }

    fn forward_shared(&mut self, x: ArcArrayD<f32>) -> Result<ArcArrayD<f32>> {
        let s = self.negative_slope;
        let f = move |v| leaky_relu_value(v, s);
        // A negative slope flips the sign of negative inputs: only the input tells them
        // apart then. Any other slope (0, NaN and infinities included) keeps `x > 0`
        // exactly where the output is `> 0`.
        if s < 0.0 {
            self.saved.forward_keep_input("LeakyReLU", x, f)
        } else {
            self.saved.forward_keep_output("LeakyReLU", x, f)
        }
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let s = self.negative_slope;
        let v = self.saved.values("LeakyReLU", grad_out.shape())?;
        zip_map_array("LeakyReLU", v.view(), grad_out, |v, g| {
            leaky_relu_grad_value(v, g, s)
        })
    }

    fn backward_owned(&mut self, mut grad_out: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let s = self.negative_slope;
        let v = self.saved.values("LeakyReLU", grad_out.shape())?;
        update_array_with(grad_out.view_mut(), v.view(), |v, g| {
            leaky_relu_grad_value(v, g, s)
        });
        Ok(grad_out)
    }

    fn clear_saved(&mut self) {
        self.saved.clear();
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// An element-wise activation whose backward reads its saved output, as PyTorch's.
macro_rules! output_activation {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $f:expr, $grad:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default)]
        pub struct $ty {
            saved: Saved,
        }

        impl $ty {
            #[doc = concat!("A `", $name, "` layer.")]
            pub fn new() -> Self {
                Self::default()
            }
        }

        impl Layer for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
                self.saved.forward_view_keep_output($name, x, $f)
            }

            fn forward_shared(&mut self, x: ArcArrayD<f32>) -> Result<ArcArrayD<f32>> {
                self.saved.forward_keep_output($name, x, $f)
            }

            fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
                let y = self.saved.values($name, grad_out.shape())?;
                zip_map_array($name, y.view(), grad_out, $grad)
            }

            fn backward_owned(&mut self, mut grad_out: ArrayD<f32>) -> Result<ArrayD<f32>> {
                let y = self.saved.values($name, grad_out.shape())?;
                update_array_with(grad_out.view_mut(), y.view(), $grad);
                Ok(grad_out)
            }

            fn clear_saved(&mut self) {
                self.saved.clear();
            }

            fn as_any(&self) -> &dyn Any {
                self
            }

            fn as_any_mut(&mut self) -> &mut dyn Any {
                self
            }
        }
    };
}

output_activation!(
    /// `nn.Tanh`: `tanh(x)` on any shape. Keeps its last output (in a
    /// [`super::Sequential`] without a copy) and computes the gradient from it,
    /// `dy * (1 - y^2)`, as PyTorch.
    Tanh,
    "Tanh",
    tanh_value,
    tanh_grad_value
);

output_activation!(
    /// `nn.Sigmoid`: `1 / (1 + exp(-x))` on any shape. Keeps its last output (in a
    /// [`super::Sequential`] without a copy) and computes the gradient from it,
    /// `dy * (1 - y) * y`, as PyTorch.
    Sigmoid,
    "Sigmoid",
    sigmoid_value,
    sigmoid_grad_value
);

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{IxDyn, Zip};

    #[test]
    fn relu_reuses_buffers_and_works_in_place_when_nothing_else_holds_them() {
        let x = ArrayD::from_shape_fn(IxDyn(&[3, 50_000]), |i| i[1] as f32 - 25_000.5);
        let x = x.into_shared();
        let want = x.mapv(|v| v.max(0.0));
        let mut r = Relu::new();
        let y = r.forward_shared(x.clone()).unwrap();
        assert_eq!(y, want);
        let first = y.as_ptr();
        drop(y);
        // The previous output is written over when nothing else holds it ...
        r.clear_saved();
        let y = r.forward_shared(x.clone()).unwrap();
        assert_eq!(y.as_ptr(), first);
        assert_eq!(y, want);
        drop(y);
        // ... and an input nobody else holds is overwritten itself.
        let own = x.to_owned().into_shared();
        let at = own.as_ptr();
        let y = r.forward_shared(own).unwrap();
        assert_eq!(y.as_ptr(), at);
        assert_eq!(y, want);
        // Backward masks the gradient in its own buffer.
        let g = ArrayD::from_elem(x.raw_dim(), 2.0f32);
        let at = g.as_ptr();
        let dx = r.backward_owned(g).unwrap();
        assert_eq!(dx.as_ptr(), at);
        assert_eq!(dx, x.mapv(|v| if v > 0.0 { 2.0 } else { 0.0 }));
    }

    #[test]
    fn tanh_and_sigmoid_keep_their_output_on_both_paths() {
        let x = ndarray::array![[-2.0f32, -0.5, 0.0, 0.7, 3.0]].into_dyn();
        let dy = ndarray::array![[1.0f32, -2.0, 0.5, 1.5, 1.0]].into_dyn();
        let layers: [(Box<dyn Layer>, Box<dyn Layer>); 2] = [
            (Box::new(Tanh::new()), Box::new(Tanh::new())),
            (Box::new(Sigmoid::new()), Box::new(Sigmoid::new())),
        ];
        for (mut a, mut b) in layers {
            let name = a.name();
            assert!(matches!(
                a.backward(dy.view()),
                Err(crate::Error::State { op, .. }) if op == name
            ));
            let ya = a.forward(x.view()).unwrap();
            let yb = b.forward_shared(x.to_owned().into_shared()).unwrap();
            assert_eq!(ya, yb.to_owned(), "{name}");
            let da = a.backward(dy.view()).unwrap();
            let db = b.backward_owned(dy.clone()).unwrap();
            assert_eq!(da, db, "{name}");
            // From the output: tanh' = 1 - y^2, sigmoid' = y (1 - y).
            let want = match name {
                "Tanh" => Zip::from(&ya)
                    .and(&dy)
                    .map_collect(|&y, &g| g * (1.0 - y * y)),
                _ => Zip::from(&ya)
                    .and(&dy)
                    .map_collect(|&y, &g| g * (1.0 - y) * y),
            };
            assert_eq!(da, want, "{name}");
            let e = a
                .backward(dy.slice(ndarray::s![.., ..2]).into_dyn())
                .unwrap_err();
            assert!(
                matches!(e, crate::Error::Shape { op, .. } if op == name),
                "{e}"
            );
        }
        assert_eq!(
            (Tanh::new().name(), Sigmoid::new().name()),
            ("Tanh", "Sigmoid")
        );
    }

    #[test]
    fn leaky_relu_with_a_negative_slope_keeps_its_input() {
        let x = ndarray::array![-2.0f32, -0.0, 3.0, f32::NAN].into_dyn();
        for slope in [-0.5f32, 0.0, 0.5, f32::INFINITY] {
            let mut a = LeakyRelu::new(slope);
            let mut b = LeakyRelu::new(slope);
            let ya = a.forward(x.view()).unwrap();
            let yb = b.forward_shared(x.to_owned().into_shared()).unwrap();
            let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ya), bits(&yb.to_owned()), "slope {slope}");
            let dy = ndarray::array![1.0f32, 1.0, 1.0, 1.0].into_dyn();
            let da = a.backward(dy.view()).unwrap();
            let db = b.backward_owned(dy).unwrap();
            assert_eq!(bits(&da), bits(&db), "slope {slope}");
        }
    }
}
