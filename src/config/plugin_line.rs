//! Finding the plugin's own line in `plugin.config` again, for a reload: ATS reads
//! `plugin.config` only at start-up, but a reload takes the list of filter files from the file
//! as it is now.
#![forbid(unsafe_code)]

/// The arguments of the one line of `plugin_config` (the file's text) that loads the plugin
/// named `plugin` (the first argument ATS gave `TSPluginInit`, i.e. the path as written), split
/// at whitespace like ATS does, with `#` comments and blank lines skipped. `plugin` itself is
/// the first item. An error when no line or more than one line names it.
pub fn plugin_line(plugin_config: &str, plugin: &str) -> Result<Vec<String>, String> {
    let mut found: Vec<Vec<String>> = plugin_config
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|words| words.first().is_some_and(|w| w == plugin))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!("no line loads {plugin}")),
        n => Err(format!("{n} lines load {plugin}; which one is this plugin's is ambiguous")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_line_is_found_by_the_plugin_path_as_written() {
        let text = "# comment\nstats_over_http.so\n\n/usr/lib/libats_wasm.so  --pool-size=2 a.yaml b.yaml # two\n";
        assert_eq!(
            plugin_line(text, "/usr/lib/libats_wasm.so").unwrap(),
            ["/usr/lib/libats_wasm.so", "--pool-size=2", "a.yaml", "b.yaml"]
        );
        assert!(plugin_line(text, "libats_wasm.so").unwrap_err().contains("no line"));
        assert!(plugin_line("# libats_wasm.so a.yaml\n", "libats_wasm.so").is_err(), "a comment is no line");
        let twice = "libats_wasm.so a.yaml\nlibats_wasm.so b.yaml\n";
        assert!(plugin_line(twice, "libats_wasm.so").unwrap_err().contains("ambiguous"));
    }
}
