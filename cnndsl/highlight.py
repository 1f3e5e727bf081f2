"""A Pygments lexer for cnndsl, registered as the `pygments.lexers` entry point `cnndsl`.

`pygmentize -l cnndsl file.cnn`, Sphinx's and MkDocs' ```` ```cnndsl ```` blocks use it. The
keyword lists come from the grammar (through the generated parser module), so a keyword added
there is highlighted here without an edit. It is a plain regular-expression lexer: every
character of a program is some token, and no valid program gives an `Error` token (a test).
"""

from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, Text, Whitespace

from .grammar.cnndsl_lalr import LAYER_KEYWORDS, OPTION_KEYWORDS, SECTION_KEYWORDS, TERMINAL_WORDS, TOP_KEYWORDS

__all__ = ["CnnDslLexer"]

_ACTIVATIONS = TERMINAL_WORDS["ACTIVATION"]
_STATEMENTS = tuple(w for w in LAYER_KEYWORDS if w not in _ACTIVATIONS)
_OPTIONS = tuple(dict.fromkeys(OPTION_KEYWORDS + SECTION_KEYWORDS + TERMINAL_WORDS["POOL_MODE"]
                               + TERMINAL_WORDS["UPSAMPLE_MODE"] + TERMINAL_WORDS["FLIP_AXIS"]
                               + TERMINAL_WORDS["SETTING"]))
_FUNCTIONS = ("min", "max", "round", "divisible")


class CnnDslLexer(RegexLexer):
    """cnndsl network programs (`.cnn`)."""

    name = "cnndsl"
    aliases = ["cnndsl", "cnn"]
    filenames = ["*.cnn"]
    mimetypes = ["text/x-cnndsl"]
    url = "https://github.com/cnndsl/cnndsl"

    tokens = {
        "root": [
            (r"[ \t\f\r]+", Whitespace),
            (r"\n", Whitespace),
            (r"\\\r?\n", Text),  # a line continuation
            (r"#.*?$", Comment.Single),
            (r"(block)(\s+)([A-Za-z_]\w*)", bygroups(Keyword.Declaration, Whitespace, Name.Function)),
            (r"(network)(\s+)([A-Za-z_]\w*)", bygroups(Keyword.Declaration, Whitespace, Name.Class)),
            (r"(expect)(\s+)([A-Za-z_]\w*)", bygroups(Keyword.Declaration, Whitespace, Name.Attribute)),
            (words(TOP_KEYWORDS, suffix=r"\b"), Keyword.Declaration),
            (words(_STATEMENTS, suffix=r"\b"), Keyword),
            (words(_ACTIVATIONS, suffix=r"\b"), Name.Builtin),
            (r"(pad|dil|groups|outpad|x)(\d+)\b", bygroups(Keyword.Pseudo, Number.Integer)),  # glued: pad1, x2
            (r"(to)(\s+)(input)\b", bygroups(Keyword.Pseudo, Whitespace, Keyword.Pseudo)),
            (words(_FUNCTIONS, suffix=r"(?=\s*\()"), Name.Builtin),
            (words(_OPTIONS, suffix=r"\b"), Keyword.Pseudo),
            (r"in_c\b", Name.Builtin.Pseudo),
            (r"[A-Za-z_]\w*(?=\s*\()", Name.Function),  # a block call with arguments
            (r"[A-Za-z_]\w*", Name),
            (r"\d+(x\d+)+(?![\w.])", Number),  # a size: 3x3, 3x224x224
            (r"\d+x(?![\w(])", Number),  # a channel multiplier: 2x
            (r"(\d+(\.\d*)?|\.\d+)[KMG]\b", Number.Float),  # 5M
            (r"(\d+\.\d*|\.\d+)([eE][+-]?\d+)?|\d+[eE][+-]?\d+", Number.Float),
            (r"\d+", Number.Integer),
            (r"->|//|<=|>=|==|[-+*/<>=:]", Operator),
            (r"[{}(),;]", Punctuation),
        ],
    }
