"""The copy-literals decoding constraint: it never rules out a gold query of the generator, it
rules out numbers and strings the question does not spell, and the decoder obeys it. The literal
bytes of a query and their likelihood (the copying metric)."""
import pytest
import torch

from fastattn.data import ByteTokenizer
from fastattn.models import TransformerConfig, TransformerLM
from fastattn.tasks.decode import greedy_decode
from fastattn.tasks.finetune import encode_pairs, target_nll
from fastattn.tasks.text_to_sql.literals import literal_bytes, literal_constraint


def _allows(question: str, sql: str) -> bool:
    allow, g = literal_constraint(question), sql.encode()
    return all((m := allow(g[:i])) is None or bool(m[g[i]]) for i in range(len(g)))


def test_gold_queries_pass(splits):
    for split in splits.values():
        for ex in split:
            assert _allows(ex.question, ex.sql), (ex.question, ex.sql)


def test_literals_not_in_the_question_are_ruled_out():
    q = "Which workers named like %ar% with an age between 30 and 38, starting with P, in Lima?"
    assert _allows(q, "SELECT name FROM employees WHERE age BETWEEN 30 AND 38;")
    assert _allows(q, "SELECT name FROM employees AS e WHERE e.name LIKE 'P%' AND t1.x IN ('Lima');")
    assert not _allows(q, "SELECT name FROM employees WHERE age > 31;")      # 31 is no number of the question
    assert not _allows(q, "SELECT name FROM employees WHERE age > 3;")       # nor a piece of one
    assert not _allows(q, "SELECT name FROM employees WHERE age > 380;")
    assert not _allows(q, "SELECT name FROM departments WHERE city = 'Oslo';")
    assert not _allows(q, "SELECT name FROM employees WHERE name LIKE '%ar%x';")  # text after the closing %
    assert not _allows(q, "SELECT name FROM employees WHERE name = '';")      # an empty literal


def test_decoder_obeys_the_constraint():
    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)).eval()
    tok = ByteTokenizer()
    prompts = [tok.encode("Q: a 42\nSQL: x > "), tok.encode("Q: b 7\nSQL: x > ")]
    outs = greedy_decode(model, prompts, 6, constraints=[None, lambda g: torch.arange(256) == ord("7")])
    assert outs[1] == [ord("7")] * 6
    assert outs[0] == greedy_decode(model, prompts[:1], 6)[0]
    # a real literal constraint: a number begun as "4" must go on as the question's "42"
    allow = literal_constraint("a 42")
    first = greedy_decode(model, prompts[:1], 1, constraints=[lambda g: allow(b"x > 4" + g)])[0]
    assert first == [ord("2")]


def _marked(sql: str) -> str:
    return "".join("^" if m else "." for m in literal_bytes(sql))


def test_literal_bytes():
    sql = "SELECT t1.name FROM employees AS t1 WHERE t1.age > 30 AND t1.city IN ('Lima', 'São Paulo') AND x LIKE '%ar%';"
    raw = sql.encode()  # t1 is a name, not a number; quotes and LIKE wildcards are not copied
    assert [raw[i:i + 1] for i, m in enumerate(literal_bytes(sql)) if m] == [bytes([b]) for b in b"30LimaS\xc3\xa3o Pauloar"]
    assert _marked("SELECT COUNT(*) FROM t;") == "." * 23


def test_target_nll_select_counts_only_the_selected_tokens():
    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(vocab_size=256, dim=32, n_layers=1, n_heads=2, max_seq_len=64)).eval()
    seqs = encode_pairs(ByteTokenizer(), [("Q: a 42\nSQL: ", "SELECT 42;"), ("Q: b\nSQL: ", "SELECT b;")])
    select = [[c.isdigit() for c in "SELECT 42;"], [False] * 9]
    got = target_nll(model, seqs, select=select)
    ids, n_prompt = seqs[0]
    with torch.no_grad():
        logp = model(torch.tensor([ids[:-1]])).log_softmax(-1)[0]
    want = -sum(logp[n_prompt - 1 + j, ids[n_prompt + j]].item() for j in (7, 8)) / 2
    assert got["tokens"] == 2 and abs(got["nll"] - want) < 1e-5
    with pytest.raises(ValueError, match=r"select\[1\] has 1 entries for 9"):
        target_nll(model, seqs, select=[[True], [True]])
