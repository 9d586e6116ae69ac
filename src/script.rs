//! The show script (first form): show metadata, a product catalogue and an ordered list of
//! segments of lines, played in a loop forever.
//!
//! Lines may name fields of the segment's product (`{name}`, `{price}`); every reference is checked
//! at load so a typo is reported with its position instead of being spoken on air. The types keep
//! room to grow (persona, timed events, priorities) without changing what existing scripts mean.

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::{Diagnostics, SourceText};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowScript {
    pub show: ShowMeta,
    #[serde(default)]
    pub products: Vec<Product>,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowMeta {
    pub title: String,
    /// BCP 47 language of the lines; only `en` so far.
    pub language: Spanned<String>,
    /// The host's name, as the host introduces itself.
    pub host: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    pub id: Spanned<String>,
    pub name: String,
    pub price: Spanned<f64>,
    #[serde(default = "default_currency")]
    pub currency: Spanned<String>,
    #[serde(default)]
    pub selling_points: Vec<String>,
}

fn default_currency() -> Spanned<String> {
    Spanned::new(0..0, "USD".into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub name: String,
    /// The product this segment presents; its fields can be used in lines.
    pub product: Option<Spanned<String>>,
    pub lines: Vec<Spanned<String>>,
}

/// The fields a line may reference, with how each is spoken.
const FIELDS: &[&str] = &["name", "price"];

impl Product {
    fn field(&self, name: &str) -> Option<String> {
        match name {
            "name" => Some(self.name.clone()),
            "price" => Some(format_price(*self.price.get_ref(), self.currency.get_ref())),
            _ => None,
        }
    }
}

/// Writes a price the way the host should say it (`$59`, `$19.99`, `¥199`).
pub fn format_price(price: f64, currency: &str) -> String {
    let amount = if price.fract() == 0.0 { format!("{price:.0}") } else { format!("{price:.2}") };
    match currency {
        "USD" => format!("${amount}"),
        "EUR" => format!("€{amount}"),
        "GBP" => format!("£{amount}"),
        "CNY" => format!("¥{amount}"),
        other => format!("{amount} {other}"),
    }
}

impl ShowScript {
    pub fn parse(path: &str, text: &str) -> Result<ShowScript, Diagnostics> {
        let src = SourceText::new(path, text);
        let script: ShowScript = src.parse_toml()?;
        let mut errors = Vec::new();
        let lang = &script.show.language;
        if lang.get_ref() != "en" {
            errors.push(src.error(
                Some(lang.span()),
                format!("language `{}` has no voice yet", lang.get_ref()),
                Some("use \"en\"".into()),
            ));
        }
        for (i, p) in script.products.iter().enumerate() {
            if p.id.get_ref().trim().is_empty() {
                errors.push(src.error(Some(p.id.span()), "product id is empty", None));
            }
            if script.products[..i].iter().any(|q| q.id.get_ref() == p.id.get_ref()) {
                errors.push(src.error(
                    Some(p.id.span()),
                    format!("product id `{}` is used twice", p.id.get_ref()),
                    Some("give every product its own id".into()),
                ));
            }
            let price = *p.price.get_ref();
            if !(price.is_finite() && price >= 0.0) {
                errors.push(src.error(Some(p.price.span()), format!("price {price} is not a positive amount"), None));
            }
            if !["USD", "EUR", "GBP", "CNY"].contains(&p.currency.get_ref().as_str()) {
                let span = (p.currency.span() != (0..0)).then(|| p.currency.span());
                errors.push(src.error(
                    span,
                    format!("currency `{}` is not known", p.currency.get_ref()),
                    Some("use USD, EUR, GBP or CNY".into()),
                ));
            }
        }
        if script.segments.iter().all(|s| s.lines.is_empty()) {
            errors.push(src.error(
                None,
                "the script has no lines to say",
                Some("add [[segments]] with lines = [\"...\"]".into()),
            ));
        }
        for seg in &script.segments {
            let product = match &seg.product {
                Some(id) => match script.product(id.get_ref()) {
                    Some(p) => Some(p),
                    None => {
                        errors.push(src.error(
                            Some(id.span()),
                            format!("segment `{}` names unknown product `{}`", seg.name, id.get_ref()),
                            Some(format!("known products: {}", script.product_ids().join(", "))),
                        ));
                        continue;
                    }
                },
                None => None,
            };
            for line in &seg.lines {
                if line.get_ref().trim().is_empty() {
                    errors.push(src.error(Some(line.span()), "line is empty", Some("remove it".into())));
                }
                for field in placeholders(line.get_ref()) {
                    if !FIELDS.contains(&field) {
                        errors.push(src.error(
                            Some(line.span()),
                            format!("unknown field `{{{field}}}`"),
                            Some(format!(
                                "lines can use {}",
                                FIELDS.iter().map(|f| format!("{{{f}}}")).collect::<Vec<_>>().join(", ")
                            )),
                        ));
                    } else if product.is_none() {
                        errors.push(src.error(
                            Some(line.span()),
                            format!("`{{{field}}}` needs a product, but segment `{}` has none", seg.name),
                            Some("add product = \"<id>\" to the segment".into()),
                        ));
                    }
                }
            }
        }
        if errors.is_empty() { Ok(script) } else { Err(Diagnostics(errors)) }
    }

    pub fn product(&self, id: &str) -> Option<&Product> {
        self.products.iter().find(|p| p.id.get_ref() == id)
    }

    fn product_ids(&self) -> Vec<String> {
        self.products.iter().map(|p| p.id.get_ref().clone()).collect()
    }

    /// The text of a line with its product fields filled in. Only valid after `parse` succeeded.
    pub fn render_line(&self, segment: &Segment, line: &str) -> String {
        let product = segment.product.as_ref().and_then(|id| self.product(id.get_ref()));
        let mut out = String::with_capacity(line.len());
        let mut rest = line;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else { break };
            let name = &rest[open + 1..open + close];
            out.push_str(&rest[..open]);
            match product.and_then(|p| p.field(name)) {
                Some(v) => out.push_str(&v),
                None => out.push_str(&rest[open..=open + close]),
            }
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// Field names in `{...}` placeholders.
fn placeholders(line: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        found.push(rest[open + 1..open + close].trim());
        rest = &rest[open + close + 1..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[show]
title = "t"
language = "en"
host = "Mia"

[[products]]
id = "mug"
name = "Camp Mug"
price = 19.99

[[segments]]
name = "intro"
product = "mug"
lines = ["The {name} is only {price} today."]
"#;

    #[test]
    fn fields_are_filled_from_the_segment_product() {
        let s = ShowScript::parse("s.toml", GOOD).unwrap();
        let seg = &s.segments[0];
        assert_eq!(s.render_line(seg, seg.lines[0].get_ref()), "The Camp Mug is only $19.99 today.");
    }

    #[test]
    fn bad_references_are_located() {
        let bad = GOOD.replace("product = \"mug\"", "product = \"cup\"");
        let err = ShowScript::parse("s.toml", &bad).unwrap_err().to_string();
        assert!(err.contains("s.toml:14:11: error: segment `intro` names unknown product `cup`"), "{err}");
        assert!(err.contains("known products: mug"), "{err}");

        let bad = GOOD.replace("{price}", "{prize}");
        let err = ShowScript::parse("s.toml", &bad).unwrap_err().to_string();
        assert!(err.contains("s.toml:15:10: error: unknown field `{prize}`"), "{err}");
    }

    #[test]
    fn field_without_product_is_an_error() {
        let bad = GOOD.replace("product = \"mug\"\n", "");
        let err = ShowScript::parse("s.toml", &bad).unwrap_err().to_string();
        assert!(err.contains("`{name}` needs a product"), "{err}");
    }

    #[test]
    fn prices_are_written_as_spoken() {
        assert_eq!(format_price(59.0, "USD"), "$59");
        assert_eq!(format_price(199.0, "CNY"), "¥199");
        assert_eq!(format_price(4.5, "EUR"), "€4.50");
    }
}
