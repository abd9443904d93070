//! The benchmark's conv2d shapes, in one place for `examples/bench` and
//! `examples/convbench`, and the `--shape` grammar they share with `tools/torch_bench.py`
//! (and `../shared/tools/torch_anchor.py`): `[NAME=]N,C,H,W,O,k,stride,pad` (square
//! kernel, stride and padding) or `[NAME=]N,C,H,W,O,kh,kw,sh,sw,ph,pw,dh,dw,groups`.

use convinit::ops::{Conv2dOptions, conv_out_size};

/// The named shapes, as torch_anchor.py times them: the notebook's four layers at N = 100
/// (seed_l1..l4), a wide first layer (nb_32x1x5), three ResNet / VGG layers, a MobileNet
/// depthwise layer (dw_64) and a 1x1 projection (pw_64x128). The fields are as written
/// in JSON "shape": 8 for the short form, 14 for the long one.
pub const NAMED_SHAPES: &[(&str, &[usize])] = &[
    ("seed_l1", &[100, 1, 28, 28, 8, 5, 2, 2]),
    ("seed_l2", &[100, 8, 14, 14, 16, 3, 2, 1]),
    ("seed_l3", &[100, 16, 7, 7, 32, 3, 2, 1]),
    ("seed_l4", &[100, 32, 4, 4, 1, 3, 2, 1]),
    ("nb_32x1x5", &[200, 1, 28, 28, 32, 5, 1, 0]),
    ("resnet_64", &[32, 64, 56, 56, 64, 3, 1, 1]),
    ("resnet_128s2", &[32, 64, 56, 56, 128, 3, 2, 1]),
    ("vgg_256", &[8, 256, 28, 28, 256, 3, 1, 1]),
    ("dw_64", &[32, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1, 1, 1, 64]),
    (
        "pw_64x128",
        &[32, 64, 56, 56, 128, 1, 1, 1, 1, 0, 0, 1, 1, 1],
    ),
];

/// Field names of the short form.
const SHORT: [&str; 8] = ["N", "C", "H", "W", "O", "k", "stride", "pad"];

/// Field names of the long form.
const LONG: [&str; 14] = [
    "N", "C", "H", "W", "O", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "groups",
];

/// One conv2d problem: input (N, C, H, W), O output channels, kernel, stride, padding,
/// dilation and groups; `given` keeps the fields as written (JSON "shape").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
    /// Output height and width.
    pub out: (usize, usize),
    pub given: Vec<usize>,
}

impl ConvShape {
    /// The shape of `fields` (8 or 14, as in [`NAMED_SHAPES`]); `label` names it in
    /// errors. Every field but the paddings must be positive, groups must divide both
    /// channel counts, and the dilated kernel must fit the padded input.
    pub fn from_fields(label: &str, fields: &[usize]) -> Result<ConvShape, String> {
        let names: &[&str] = match fields.len() {
            8 => &SHORT,
            14 => &LONG,
            n => {
                return Err(format!(
                    "shape '{label}': {n} fields, want 8 ({}) or 14 ({})",
                    SHORT.join(","),
                    LONG.join(",")
                ));
            }
        };
        for (i, (&v, name)) in fields.iter().zip(names).enumerate() {
            if v == 0 && !matches!(*name, "pad" | "ph" | "pw") {
                return Err(format!(
                    "shape '{label}': field {} ({name}) is 0, must be positive",
                    i + 1
                ));
            }
        }
        let f = fields;
        let (kernel, stride, padding, dilation, groups) = if f.len() == 8 {
            ((f[5], f[5]), (f[6], f[6]), (f[7], f[7]), (1, 1), 1)
        } else {
            (
                (f[5], f[6]),
                (f[7], f[8]),
                (f[9], f[10]),
                (f[11], f[12]),
                f[13],
            )
        };
        let (n, c, h, w, o) = (f[0], f[1], f[2], f[3], f[4]);
        if c % groups != 0 || o % groups != 0 {
            return Err(format!(
                "shape '{label}': groups {groups} must divide C = {c} and O = {o}"
            ));
        }
        let out_h = conv_out_size(h, kernel.0, stride.0, padding.0, dilation.0);
        let out_w = conv_out_size(w, kernel.1, stride.1, padding.1, dilation.1);
        let (Some(out_h), Some(out_w)) = (out_h, out_w) else {
            return Err(format!(
                "shape '{label}': kernel {kernel:?} with dilation {dilation:?} does not fit the \
                 {h}x{w} input padded by {padding:?}"
            ));
        };
        Ok(ConvShape {
            n,
            c,
            h,
            w,
            o,
            kernel,
            stride,
            padding,
            dilation,
            groups,
            out: (out_h, out_w),
            given: fields.to_vec(),
        })
    }

    /// The options of this conv (the default algorithm setting).
    pub fn options(&self) -> Conv2dOptions {
        Conv2dOptions::new()
            .with_stride(self.stride)
            .with_padding(self.padding)
            .with_dilation(self.dilation)
            .with_groups(self.groups)
    }

    /// Input shape (N, C, H, W).
    pub fn x_dim(&self) -> (usize, usize, usize, usize) {
        (self.n, self.c, self.h, self.w)
    }

    /// Weight shape (O, C / groups, kh, kw).
    pub fn w_dim(&self) -> (usize, usize, usize, usize) {
        (self.o, self.c / self.groups, self.kernel.0, self.kernel.1)
    }

    /// Output shape (N, O, out_h, out_w).
    pub fn y_dim(&self) -> (usize, usize, usize, usize) {
        (self.n, self.o, self.out.0, self.out.1)
    }

    /// Multiply-adds of the forward pass, `N * O * out_h * out_w * C / groups * kh * kw`
    /// (the backward does twice as many: the input and the weight gradients).
    pub fn macs(&self) -> f64 {
        [
            self.n,
            self.o,
            self.out.0,
            self.out.1,
            self.c / self.groups,
            self.kernel.0,
            self.kernel.1,
        ]
        .iter()
        .map(|&v| v as f64)
        .product()
    }

    /// The fields in the long form, whatever form was given.
    pub fn long_form(&self) -> [usize; 14] {
        [
            self.n,
            self.c,
            self.h,
            self.w,
            self.o,
            self.kernel.0,
            self.kernel.1,
            self.stride.0,
            self.stride.1,
            self.padding.0,
            self.padding.1,
            self.dilation.0,
            self.dilation.1,
            self.groups,
        ]
    }

    /// `N=32 C=64 56x56 -> O=64 56x56, k 3x3 s 1x1 p 1x1 d 1x1 g 1`.
    pub fn describe(&self) -> String {
        let p = |(a, b): (usize, usize)| format!("{a}x{b}");
        format!(
            "N={} C={} {}x{} -> O={} {}x{}, k {} s {} p {} d {} g {}",
            self.n,
            self.c,
            self.h,
            self.w,
            self.o,
            self.out.0,
            self.out.1,
            p(self.kernel),
            p(self.stride),
            p(self.padding),
            p(self.dilation),
            self.groups
        )
    }
}

/// The named shape `name`, if there is one.
pub fn named(name: &str) -> Option<ConvShape> {
    NAMED_SHAPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, f)| ConvShape::from_fields(n, f).expect("the named shapes are valid"))
}

/// Parses `[NAME=]SPEC`: the name (the spec itself when no name is given) and the shape.
/// Errors name the argument and the offending field.
pub fn parse_shape(arg: &str) -> Result<(String, ConvShape), String> {
    let arg = arg.trim();
    let (name, spec) = match arg.split_once('=') {
        Some((name, spec)) => (name.trim(), spec.trim()),
        None => (arg, arg),
    };
    if name.is_empty() {
        return Err(format!("shape '{arg}': the name before '=' is empty"));
    }
    if spec.is_empty() {
        return Err(format!("shape '{arg}': no fields after the name"));
    }
    let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
    let names: &[&str] = match parts.len() {
        8 => &SHORT,
        14 => &LONG,
        n => {
            return Err(format!(
                "shape '{arg}': {n} fields, want 8 ({}) or 14 ({})",
                SHORT.join(","),
                LONG.join(",")
            ));
        }
    };
    let mut fields = Vec::with_capacity(parts.len());
    for (i, (part, field)) in parts.iter().zip(names).enumerate() {
        let v: usize = part.parse().map_err(|_| {
            let want = if matches!(*field, "pad" | "ph" | "pw") {
                "a non-negative integer"
            } else {
                "a positive integer"
            };
            format!(
                "shape '{arg}': field {} ({field}) is '{part}', not {want}",
                i + 1
            )
        })?;
        fields.push(v);
    }
    Ok((name.to_string(), ConvShape::from_fields(arg, &fields)?))
}
