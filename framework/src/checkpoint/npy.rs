//! Reading every array of an `.npz` (a zip of `.npy` files), in C or Fortran order.
//!
//! candle's reader refuses Fortran-ordered arrays, which `np.savez` writes for any transposed
//! array, as hand conversions of Google's checkpoints produce.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

/// Reads every array of the `.npz` at `path`, by name (the `.npy` suffix dropped).
pub fn read_npz(path: &Path) -> Result<HashMap<String, Tensor>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| e.to_string())?;
        let name = entry.name().map_err(|e| e.to_string())?.trim_end_matches(".npy").to_owned();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| format!("array `{name}`: {e}"))?;
        out.insert(name.clone(), parse_npy(&bytes).map_err(|e| format!("array `{name}`: {e}"))?);
    }
    Ok(out)
}

/// Parses one `.npy` file (format versions 1 to 3).
fn parse_npy(bytes: &[u8]) -> Result<Tensor, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy array".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes.get(start..start + header_len).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = field(header, "descr").ok_or("header lacks `descr`")?;
    let fortran = field(header, "fortran_order").ok_or("header lacks `fortran_order`")? == "True";
    let shape_text = field(header, "shape").ok_or("header lacks `shape`")?;
    let shape: Vec<usize> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad shape {shape_text}")))
        .collect::<Result<_, _>>()?;
    let data = &bytes[start + header_len..];
    let count: usize = shape.iter().product();
    let (dtype, size) = match descr.trim_matches('\'') {
        "<f4" => (DType::F32, 4),
        "<f8" => (DType::F64, 8),
        "<f2" => (DType::F16, 2),
        "<i8" => (DType::I64, 8),
        "|u1" => (DType::U8, 1),
        other => return Err(format!("unsupported dtype {other}")),
    };
    if data.len() < count * size {
        return Err(format!("truncated data: {} of {} bytes", data.len(), count * size));
    }
    // Fortran order is C order of the reversed shape; reversing the axes restores the array.
    let stored: Vec<usize> = if fortran { shape.iter().rev().copied().collect() } else { shape.clone() };
    let t = Tensor::from_raw_buffer(&data[..count * size], dtype, &stored, &Device::Cpu)
        .map_err(|e| e.to_string())?;
    if fortran && shape.len() > 1 {
        let axes: Vec<usize> = (0..shape.len()).rev().collect();
        return t.permute(axes).and_then(|t| t.contiguous()).map_err(|e| e.to_string());
    }
    Ok(t)
}

/// The value text of `'key': value` in an `.npy` header dict.
fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let rest = &header[header.find(&format!("'{key}'"))? + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}'])? };
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn c_and_fortran_order_give_the_same_array() {
        let c: Vec<u8> = [1f32, 2., 3., 4., 5., 6.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f: Vec<u8> = [1f32, 4., 2., 5., 3., 6.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(&npy("<f4", false, "(2, 3)", &c)).unwrap();
        let b = parse_npy(&npy("<f4", true, "(2, 3)", &f)).unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), vec![vec![1., 2., 3.], vec![4., 5., 6.]]);
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        let scalar = parse_npy(&npy("<f8", false, "()", &2.5f64.to_le_bytes())).unwrap();
        assert_eq!(scalar.to_scalar::<f64>().unwrap(), 2.5);
    }

    #[test]
    fn bad_arrays_say_what_is_wrong() {
        assert!(parse_npy(b"nonsense").unwrap_err().contains("not an .npy"));
        assert!(parse_npy(&npy("<f4", false, "(2, 3)", &[0; 8])).unwrap_err().contains("truncated data"));
        assert!(
            parse_npy(&npy("<c8", false, "(1,)", &[0; 8])).unwrap_err().contains("unsupported dtype <c8")
        );
    }
}
