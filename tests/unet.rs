//! The UNet: structure against diffusers (parameter names, counts), input validation, and the
//! whole network's hand-written backward against finite differences, every parameter tensor.

mod common;

use common::normal;
use ddpm::backend::cpu::Cpu;
use ddpm::gradcheck::{project, GradCheck};
use ddpm::nn::{DownBlockType::*, UNet, UNetConfig, UpBlockType::*};
use ddpm::params::ParamArena;

/// A small config that still exercises every kind of layer: two levels, attention with two
/// heads in a down block, an up block and the middle, 1×1 shortcuts, asymmetric downsample
/// padding, dropout, and class conditioning.
fn small_config() -> UNetConfig {
    UNetConfig {
        sample_size: 8,
        in_channels: 2,
        out_channels: 3,
        block_out_channels: vec![4, 8],
        layers_per_block: 1,
        down_block_types: vec![DownBlock2D, AttnDownBlock2D],
        up_block_types: vec![AttnUpBlock2D, UpBlock2D],
        norm_num_groups: 2,
        norm_eps: 1e-5,
        dropout: 0.25,
        attention_head_dim: Some(4),
        flip_sin_to_cos: true,
        freq_shift: 1.0,
        time_embedding_dim: Some(8),
        num_class_embeds: Some(3),
        downsample_padding: 0,
        ..UNetConfig::default()
    }
}

#[test]
fn ddpm_cifar10_preset_has_the_papers_parameter_count() {
    // Ho et al.'s CIFAR-10 model as published in diffusers (`google/ddpm-cifar10-32`): 35.7M.
    let net = UNet::new(UNetConfig::preset("ddpm-cifar10").unwrap()).unwrap();
    assert_eq!(net.num_params(), 35_746_307);
}

#[test]
fn parameter_names_follow_diffusers() {
    let net = UNet::new(UNetConfig::preset("ddpm-cifar10").unwrap()).unwrap();
    let shape = |name: &str| {
        let id = net
            .layout
            .id(name)
            .unwrap_or_else(|_| panic!("no `{name}`"));
        net.layout.spec(id).shape.clone()
    };
    assert_eq!(shape("conv_in.weight"), [128, 3, 3, 3]);
    assert_eq!(shape("time_embedding.linear_1.weight"), [512, 128]);
    assert_eq!(shape("time_embedding.linear_2.weight"), [512, 512]);
    assert_eq!(
        shape("down_blocks.0.resnets.0.time_emb_proj.weight"),
        [128, 512]
    );
    assert_eq!(
        shape("down_blocks.1.resnets.0.conv_shortcut.weight"),
        [256, 128, 1, 1]
    );
    assert_eq!(shape("down_blocks.1.attentions.1.to_q.weight"), [256, 256]);
    assert_eq!(shape("down_blocks.1.attentions.0.to_out.0.bias"), [256]);
    assert_eq!(
        shape("down_blocks.2.downsamplers.0.conv.weight"),
        [256, 256, 3, 3]
    );
    assert_eq!(shape("mid_block.attentions.0.group_norm.weight"), [256]);
    assert_eq!(shape("mid_block.resnets.1.conv2.weight"), [256, 256, 3, 3]);
    // Up level 0 (4×4) reads 256 + 256 channels; its last layer reads level 2's 256.
    assert_eq!(
        shape("up_blocks.0.resnets.0.conv1.weight"),
        [256, 512, 3, 3]
    );
    // Up level 3 (32×32): 256 + 128 in the first layer, then 128 + 128.
    assert_eq!(
        shape("up_blocks.3.resnets.0.conv1.weight"),
        [128, 384, 3, 3]
    );
    assert_eq!(
        shape("up_blocks.3.resnets.2.conv1.weight"),
        [128, 256, 3, 3]
    );
    assert_eq!(shape("up_blocks.2.attentions.2.to_v.weight"), [256, 256]);
    assert_eq!(
        shape("up_blocks.2.upsamplers.0.conv.weight"),
        [256, 256, 3, 3]
    );
    assert!(net
        .layout
        .id("up_blocks.3.upsamplers.0.conv.weight")
        .is_err());
    assert!(net
        .layout
        .id("down_blocks.3.downsamplers.0.conv.weight")
        .is_err());
    assert_eq!(shape("conv_norm_out.weight"), [128]);
    assert_eq!(shape("conv_out.weight"), [3, 128, 3, 3]);
}

#[test]
fn every_preset_builds_and_runs_a_forward() {
    for name in ddpm::nn::PRESETS {
        let mut cfg = UNetConfig::preset(name).unwrap();
        // Keep the check quick: the structure is what is tested, not the width.
        if name != "tiny" {
            cfg.block_out_channels = cfg.block_out_channels.iter().map(|c| c / 4).collect();
            cfg.norm_num_groups = 8;
        }
        let net = UNet::new(cfg).unwrap();
        let p = net.init_params::<f32>(1);
        let xs = net.input_shape(2);
        let x = common::to_f32(&normal(xs.len(), 2));
        let y = net.predict(&p, &x, &[10.0, 500.0], None).unwrap();
        assert_eq!(y.len(), net.output_shape(2).len(), "{name}");
        assert!(y.iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn bad_inputs_are_errors_that_say_what_is_wrong() {
    let net = UNet::new(small_config()).unwrap();
    let p = net.init_params::<f64>(1);
    let xs = net.input_shape(2);
    let x = vec![0.0; xs.len()];
    let msg = |r: Result<Vec<f64>, ddpm::shape::ShapeError>| r.unwrap_err().to_string();
    assert!(msg(net.predict(&p, &x[1..], &[1.0, 2.0], Some(&[0, 1]))).contains("multiple of 128"));
    assert!(msg(net.predict(&p, &x, &[1.0], Some(&[0, 1]))).contains("timesteps"));
    assert!(msg(net.predict(&p, &x, &[1.0, 2.0], None)).contains("class labels"));
    assert!(msg(net.predict(&p, &x, &[1.0, 2.0], Some(&[0, 3]))).contains("out of range"));
}

#[test]
fn bad_configs_name_the_field() {
    type Edit = Box<dyn Fn(&mut UNetConfig)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("sample_size", Box::new(|c| c.sample_size = 7)),
        ("block_out_channels", Box::new(|c| c.norm_num_groups = 3)),
        (
            "down_block_types",
            Box::new(|c| c.down_block_types.pop().map(drop).unwrap()),
        ),
        ("dropout", Box::new(|c| c.dropout = 1.0)),
        (
            "attention_head_dim",
            Box::new(|c| c.attention_head_dim = Some(3)),
        ),
        ("act_fn", Box::new(|c| c.act_fn = "gelu".into())),
    ];
    for (field, edit) in cases {
        let mut cfg = small_config();
        edit(&mut cfg);
        let e = UNet::new(cfg).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
    let e = UNetConfig::from_json(r#"{"sample_size": 8, "bogus": 1}"#).unwrap_err();
    assert_eq!(e.field, "bogus");
}

#[test]
fn diffusers_config_json_reads_as_is() {
    // The config.json of google/ddpm-cifar10-32 (keys as diffusers writes them).
    let json = r#"{
      "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4",
      "act_fn": "silu", "attention_head_dim": null,
      "block_out_channels": [128, 256, 256, 256], "center_input_sample": false,
      "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
      "downsample_padding": 0, "flip_sin_to_cos": false, "freq_shift": 1, "in_channels": 3,
      "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06,
      "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
      "time_embedding_type": "positional",
      "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    }"#;
    let cfg = UNetConfig::from_json(json).unwrap();
    let mut preset = UNetConfig::preset("ddpm-cifar10").unwrap();
    preset.dropout = 0.0; // the released config leaves dropout at diffusers' default
    assert_eq!(UNet::new(cfg).unwrap().num_params(), 35_746_307);
    let back = UNetConfig::from_json(&preset.to_json()).unwrap();
    assert_eq!(back, preset);
}

/// Loads `tensors` (one per parameter, in layout order) into an arena.
fn arena_from(net: &UNet, tensors: &[Vec<f64>]) -> ParamArena<f64> {
    let mut p = ParamArena::zeros(net.layout.clone());
    for (spec, v) in net.layout.specs().iter().zip(tensors) {
        let id = net.layout.id(&spec.name).unwrap();
        p.value_mut(id).copy_from_slice(v);
    }
    p
}

#[test]
fn whole_network_backward_matches_finite_differences() {
    let net = UNet::new(small_config()).unwrap();
    let batch = 2;
    let init = net.init_params::<f64>(7);
    // Random γ/β too, so the norms' affine gradients are not at a special point.
    let mut tensors: Vec<Vec<f64>> = Vec::new();
    for (k, spec) in net.layout.specs().iter().enumerate() {
        let v = init.value(net.layout.id(&spec.name).unwrap()).to_vec();
        let v = if spec.name.contains("norm") {
            normal(v.len(), 1000 + k as u64)
                .iter()
                .map(|z| 1.0 + 0.3 * z)
                .collect()
        } else {
            v
        };
        tensors.push(v);
    }
    let xs = net.input_shape(batch);
    let x = normal(xs.len(), 3);
    let t = [37.5, 811.0];
    let labels = [2u32, 0];
    let r = normal(net.output_shape(batch).len(), 4);
    let dropout_seed = Some(99);

    let mut p = arena_from(&net, &tensors);
    let (_, tape) = net
        .forward(&p, &x, &t, Some(&labels), dropout_seed)
        .unwrap();
    let dx = net.backward(&mut p, &tape, &r);

    let mut inputs: Vec<(&str, Vec<f64>)> = net
        .layout
        .specs()
        .iter()
        .zip(&tensors)
        .map(|(s, v)| (s.name.as_str(), v.clone()))
        .collect();
    inputs.push(("input", x.clone()));
    let mut analytic: Vec<Vec<f64>> = net
        .layout
        .specs()
        .iter()
        .map(|s| p.grad(net.layout.id(&s.name).unwrap()).to_vec())
        .collect();
    analytic.push(dx);

    // Training asks for the parameter gradients only (no input gradient): the same values,
    // bit for bit.
    let n_params = net.layout.specs().len();
    let mut q = arena_from(&net, &tensors);
    net.backward_params_on(&mut Cpu::new(), &mut q, &tape, &r);
    for (spec, want) in net.layout.specs().iter().zip(&analytic[..n_params]) {
        let got = q.grad(net.layout.id(&spec.name).unwrap());
        assert_eq!(got, &want[..], "{}: gradient without dx", spec.name);
    }

    let loss = |v: &[Vec<f64>]| {
        let p = arena_from(&net, &v[..n_params]);
        let (y, _) = net
            .forward(&p, &v[n_params], &t, Some(&labels), dropout_seed)
            .unwrap();
        project(&y, &r)
    };
    let check = GradCheck {
        max_coords: 6,
        ..GradCheck::default()
    };
    let report = check.run(&inputs, &analytic, loss);
    println!("{report}");
    assert_eq!(
        report.tensors.len(),
        n_params + 1,
        "every tensor is checked"
    );
    report.assert_passed();
}

#[test]
fn dropout_only_acts_in_training_and_is_reproducible() {
    let net = UNet::new(small_config()).unwrap();
    let p = net.init_params::<f64>(3);
    let xs = net.input_shape(2);
    let x = normal(xs.len(), 5);
    let (t, l) = ([3.0, 400.0], [1u32, 2]);
    let eval = net.predict(&p, &x, &t, Some(&l)).unwrap();
    let (a, _) = net.forward(&p, &x, &t, Some(&l), Some(1)).unwrap();
    let (b, _) = net.forward(&p, &x, &t, Some(&l), Some(1)).unwrap();
    let (c, _) = net.forward(&p, &x, &t, Some(&l), Some(2)).unwrap();
    let (d, _) = net.forward(&p, &x, &t, Some(&l), None).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, eval);
    assert_eq!(d, eval);
}
