//! Tensor names: ours are diffusers' current keys; checkpoints saved before diffusers 0.14
//! (among them the published `google/ddpm-*` models) name an attention block's projections
//! `query`, `key`, `value` and `proj_attn` instead of `to_q`, `to_k`, `to_v` and `to_out.0`.

use std::borrow::Cow;

/// (old, current) names of the attention projections.
const RENAMES: [(&str, &str); 4] = [
    ("query", "to_q"),
    ("key", "to_k"),
    ("value", "to_v"),
    ("proj_attn", "to_out.0"),
];

/// Today's key for a tensor name: `….attentions.N.query.weight` → `….attentions.N.to_q.weight`;
/// any other name is returned unchanged.
pub fn modern_key(name: &str) -> Cow<'_, str> {
    let parts: Vec<&str> = name.split('.').collect();
    for i in 0..parts.len().saturating_sub(3) {
        let is_block = parts[i] == "attentions" && parts[i + 1].parse::<usize>().is_ok();
        if !is_block {
            continue;
        }
        if let Some((_, new)) = RENAMES.iter().find(|(old, _)| *old == parts[i + 2]) {
            let mut out: Vec<&str> = parts[..i + 2].to_vec();
            out.push(new);
            out.extend(&parts[i + 3..]);
            return Cow::Owned(out.join("."));
        }
    }
    Cow::Borrowed(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_attention_names_map_to_current_ones() {
        let cases = [
            (
                "mid_block.attentions.0.query.weight",
                "mid_block.attentions.0.to_q.weight",
            ),
            (
                "down_blocks.1.attentions.1.key.bias",
                "down_blocks.1.attentions.1.to_k.bias",
            ),
            (
                "up_blocks.2.attentions.0.value.weight",
                "up_blocks.2.attentions.0.to_v.weight",
            ),
            (
                "up_blocks.2.attentions.2.proj_attn.bias",
                "up_blocks.2.attentions.2.to_out.0.bias",
            ),
        ];
        for (old, new) in cases {
            assert_eq!(modern_key(old), new);
        }
        for same in [
            "mid_block.attentions.0.to_q.weight",
            "mid_block.attentions.0.group_norm.weight",
            "down_blocks.0.resnets.0.conv1.weight",
            "key.weight",
            "attentions.query",
        ] {
            assert_eq!(modern_key(same), same);
        }
    }
}
