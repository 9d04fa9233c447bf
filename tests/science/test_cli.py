"""The battgen CLI frame: summaries, exit codes, secret redaction."""

import yaml

from battgen.cli import EXIT_INVALID_INPUT, SUMMARY_FILENAME, main, redact_secrets


def test_redaction_is_recursive():
    config = {"api_key": "abc", "query": {"MP_API_KEY": "x", "elements": ["Li"]}, "db": [{"password": "p"}]}
    assert redact_secrets(config) == {"api_key": "<redacted>", "query": {"MP_API_KEY": "<redacted>",
                                      "elements": ["Li"]}, "db": [{"password": "<redacted>"}]}


def test_secret_in_config_never_reaches_the_summary(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"api_key": "SUPERSECRETKEY123", "elements": ["Li"]}))
    code = main(["query-mp", "--config", str(config), "--workdir", str(tmp_path / "w")])
    assert code == EXIT_INVALID_INPUT
    summary_text = (tmp_path / "w" / SUMMARY_FILENAME).read_text()
    assert "SUPERSECRETKEY123" not in summary_text
    summary = yaml.safe_load(summary_text)
    assert summary["status"] == "invalid_input" and summary["summary_format_version"] == 1
    assert summary["versions"]["battgen"]


def test_bad_config_file(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("- just\n- a list\n")
    assert main(["screen", "--config", str(config), "--workdir", str(tmp_path)]) == EXIT_INVALID_INPUT
    assert "must be a mapping" in capsys.readouterr().err


def test_a_failure_while_setting_threads_still_leaves_a_summary(tmp_path, monkeypatch):
    """Setting threads imports torch, which fails under a small memory limit: the summary says so (the
    parser turns it into out-of-memory and the restart halves the batch) instead of a bare traceback."""
    import yaml

    import battgen.cli as cli

    def out_of_memory(threads):
        raise OSError("libtorch_cpu.so: failed to map segment from shared object")

    monkeypatch.setattr(cli, "set_threads", out_of_memory)
    code, summary = cli.run_command("screen", {"input": "missing.jsonl.gz"}, tmp_path, threads=1)
    assert code == cli.EXIT_FAILED
    written = yaml.safe_load((tmp_path / SUMMARY_FILENAME).read_text())
    assert written["status"] == "failed" and "failed to map segment" in written["error"]
