"""The text-to-SQL task: data from the generator (or Spider-format files), the prompt, and the
evaluation of a fine-tuned model (constrained greedy decoding stopped at `;`, literal values copied
from the question unless eval.copy_literals is false (`literals`), then execution
accuracy and exact match on the test split, and the perplexity of the gold SQL).

Prompt: "Q: <question>\\nSQL: " (with `schema_prompt`, "Schema: <tables and columns>\\n" first:
needed when the questions span several databases, as Spider's do); target: the SQL, ending at `;`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...data.tokenizers import ByteTokenizer
from ..decode import allowed_bytes, greedy_decode
from ..finetune import encode_pairs, target_nll
from .database import schema_text
from .evaluate import evaluate
from .generator import default_database, make_splits
from .literals import literal_bytes, literal_constraint
from .spider import load_spider


@dataclass
class SqlData:
    n_train: int = 20000
    n_val: int = 200
    n_test: int = 500
    seed: int = 0
    schema_prompt: bool = False
    spider_dir: str | None = None        # Spider-format data instead of the built-in generator
    train_questions: str | None = None   # e.g. train_spider.json (relative to spider_dir)
    test_questions: str | None = None    # e.g. dev.json

    def __post_init__(self):
        if min(self.n_train, self.n_test) < 1 or self.n_val < 0:
            raise ValueError(f"data: n_train, n_test must be >= 1 and n_val >= 0, got {self.n_train}, "
                             f"{self.n_test}, {self.n_val}")
        if self.spider_dir is not None and not (self.train_questions and self.test_questions):
            raise ValueError("data.spider_dir needs data.train_questions and data.test_questions")


@dataclass
class SqlEval:
    max_new_tokens: int = 200
    samples: int = 3
    batch_size: int = 64
    timeout: float = 2.0     # seconds per query
    copy_literals: bool = True   # numbers and quoted strings only as the question spells them (`literals`)


def prompt_text(question: str, schema: str | None = None) -> str:
    head = f"Schema: {schema}\n" if schema else ""
    return f"{head}Q: {question}\nSQL: "


class TextToSQLTask:
    name = "text-to-sql"
    columns = [("execution_accuracy", "exec acc", "{:.1%}"), ("exact_match", "exact match", "{:.1%}"),
               ("sql_perplexity", "SQL ppl", "{:.3f}"), ("literal_nll", "literal NLL", "{:.3f}")]

    def __init__(self, data: SqlData, ev: SqlEval, max_len: int):
        self.ev, self.tok, self.schemas = ev, ByteTokenizer(), {}
        if data.spider_dir:
            train = load_spider(data.spider_dir, data.train_questions)
            test = load_spider(data.spider_dir, data.test_questions)
        else:
            path = default_database(data.seed)
            self.schemas = {str(path): schema_text(path)} if data.schema_prompt else {}
            splits = make_splits(data.n_train, data.n_val, data.n_test, seed=data.seed, path=path,
                                 keep=lambda ex: self._length(ex) <= max_len)
            train, test = splits["train"], splits["test"]
        if data.schema_prompt:
            for ex in train + test:
                self.schemas.setdefault(ex.db_path, schema_text(ex.db_path))
        self.train, self.test, self.max_len = train, test, max_len
        fits = [ex for ex in train if self._length(ex) <= max_len]
        self.train_seqs = encode_pairs(self.tok, [(self._prompt(ex), ex.sql) for ex in fits], max_len)
        self.test_seqs = [(self.tok.encode(self._prompt(ex)) + self.tok.encode(ex.sql), len(self._prompt(ex).encode()))
                          for ex in test]
        self.allowed = allowed_bytes([ex.sql for ex in train], extra=";")

    def _prompt(self, ex) -> str:
        return prompt_text(ex.question, self.schemas.get(ex.db_path))

    def _length(self, ex) -> int:
        return len(self._prompt(ex).encode()) + len(ex.sql.encode())

    def predict(self, model, examples, progress: bool = False) -> list[str]:
        """The model's SQL for each example (constrained greedy decoding, stopped at `;`)."""
        prompts = [self.tok.encode(self._prompt(ex)) for ex in examples]
        L = model.config.max_seq_len
        fit = [i for i, p in enumerate(prompts) if len(p) < L]  # a prompt filling the context gets ""
        constraints = [literal_constraint(examples[i].question) for i in fit] if self.ev.copy_literals else None
        outs = greedy_decode(model, [prompts[i] for i in fit], self.ev.max_new_tokens, stop=self.tok.encode(";"),
                             allowed=self.allowed, batch_size=self.ev.batch_size, progress=progress,
                             desc="decode SQL", constraints=constraints)
        preds = [""] * len(prompts)
        for i, o in zip(fit, outs):
            preds[i] = self.tok.decode(o).strip()
        return preds

    def evaluate(self, model, progress: bool = False):
        preds = self.predict(model, self.test, progress)
        score = evaluate(self.test, preds, timeout=self.ev.timeout)
        fit = [(s, ex) for s, ex in zip(self.test_seqs, self.test) if len(s[0]) <= model.config.max_seq_len]
        ppl = target_nll(model, [s for s, _ in fit])
        literal = target_nll(model, [s for s, _ in fit], select=[literal_bytes(ex.sql) for _, ex in fit])
        metrics = {**score.as_dict(), "sql_perplexity": ppl["perplexity"], "literal_nll": literal["nll"]}
        samples = [(ex.question, p, ex.sql) for ex, p in zip(self.test, preds)][: self.ev.samples]
        return metrics, samples
