"""VisRAG's in-domain retrieval training set (``openbmb/VisRAG-Ret-Train-In-domain-data``) read
as btok training examples.

The layout is :mod:`.image_rows`' (the Hugging Face parquet, or the authors' Lance repack of the
same rows), in the folder the authors name ``openbmb_VisRAG-Ret-Train-In-domain-data``. A row
holds a question (``query``), the document page that answers it (``image``) and the collection
it comes from (``source``: one of the ten of :data:`QUERY_INSTRUCTIONS`).

**Rendering** follows the authors' ``visrag_train`` loader
(``src/vlm2emb/data/datasets/visrag.py`` of siryuson/BottleneckTokens) with the transform of
their ``visrag-indomain`` entry in ``configs/datasets/mmeb_train.yaml`` (instructions by source,
no separator after the query instruction, image on its own line, ``trailing_newline:
preserve``, negative emptied):

* query (text): the source's query instruction followed directly by the question (each
  instruction ends in ``"the query: "``), whitespace normalised, no final newline added;
* positive: the page image on its own line, then the source's page description
  (``{"text": description, "image": page, "trailing_newline": "preserve"}``); a source without
  an instruction gets none (the authors' fallback ``""``: the query is the question alone, the
  positive the image alone);
* no negative.

The yaml's ``final query`` / ``final positive`` comments show a trailing ``\\n`` on both sides;
the loader's code with the entry's ``trailing_newline: preserve``, which this follows, adds none.

Example::

    {"query": str, "positive": {"text": str | None, "image": PIL.Image, "trailing_newline": "preserve"}}

**Checks** (when opened, :class:`~btok_model.datasets.DataError` naming file, row and field): a
missing table or column, a row without image bytes, an empty question, a question holding a
vision placeholder.
"""

from __future__ import annotations

from .image_rows import ImageRowExamples
from .rendering import (
    IMAGE_TOKEN,
    LEGACY_IMAGE_TOKENS,
    FieldError,
    blame,
    check_plain_text,
    join_instruction,
    normalize_whitespace,
    strip_leading_placeholder,
    token_first,
)

__all__ = ["POSITIVE_INSTRUCTIONS", "QUERY_INSTRUCTIONS", "ROOT_NAME", "VisragTrainSet"]

# The folder the authors' README downloads the set into, under their data root.
ROOT_NAME = "openbmb_VisRAG-Ret-Train-In-domain-data"

# `transform.query.instructions.by_source` of the visrag-indomain entry in the authors'
# configs/datasets/mmeb_train.yaml (the same texts as QUERY_SOURCE_PROMPTS in their visrag.py).
QUERY_INSTRUCTIONS = {
    "NeurIPS Papers": "This query is about a research paper from NeurIPS, a leading AI/ML conference. The document "
    "contains technical discussions, methodologies, and findings. Identify relevant papers and sections that "
    "address the query: ",
    "Textbooks": "This query is related to a college-level textbook, which provides structured explanations, "
    "definitions, and examples. Find the most relevant concepts or explanations that address the query: ",
    "ICML Papers": "This query is about a research paper from ICML, a leading AI/ML conference. The document contains "
    "theoretical insights, experiments, and applications. Identify relevant papers and sections that best answer "
    "the query: ",
    "Manuallib": "This query pertains to a product manual, which contains detailed technical specifications, usage "
    "instructions, and troubleshooting steps. Find the most relevant section that answers the query: ",
    "ArxivQA": "This query is related to retrieving a relevant figure from an ArXiv research paper. The retrieved "
    "figure should contain scientific plots, mathematical visualizations, or experimental results that best "
    "address the query: ",
    "ChartQA": "This query is related to retrieving a relevant chart that visually represents numerical or "
    "categorical data. The retrieved chart should contain bar graphs, line charts, or other visual elements "
    "necessary to analyze trends, compare values, or extract insights related to the query: ",
    "MP-DocVQA": "This query is related to retrieving a relevant page from a multi-page document, such as reports, "
    "invoices, or research papers. The retrieved document should contain text, tables, or structured information "
    "necessary to answer the query: ",
    "InfoVQA": "This query is related to retrieving an infographic that visually presents statistical or factual "
    "information using charts, icons, and structured layouts. The retrieved image should contain the necessary "
    "visual elements to provide the best context for answering the query: ",
    "PlotQA": "This query relates to retrieving a relevant plot or chart that visually represents numerical data. "
    "The retrieved figure should contain the necessary information to analyze trends, compare values, or extract "
    "key insights related to the query: ",
    "SlideVQA": "This query is related to retrieving a relevant presentation slide that visually presents structured "
    "information. The retrieved slide should contain the necessary text, charts, or graphics to provide the best "
    "answer to the query: ",
}
# `transform.positive.instructions.by_source` of the same entry (TARGET_SOURCE_PROMPTS in visrag.py).
POSITIVE_INSTRUCTIONS = {
    "Textbooks": "A textbook page with structured educational content and explanations.",
    "ICML Papers": "A research paper from ICML, covering machine learning topics.",
    "NeurIPS Papers": "A research paper from NeurIPS on AI and ML topics.",
    "Manuallib": "A product manual page with technical specifications and instructions.",
    "InfoVQA": "An infographic with structured data, charts, and annotations.",
    "PlotQA": "A numerical data visualization, such as bar charts or line graphs.",
    "SlideVQA": "A presentation slide with text, bullet points, and diagrams.",
    "ArxivQA": "A figure from a research paper, including plots or experimental results.",
    "MP-DocVQA": "A page from a multi-page document with text or tables.",
    "ChartQA": "A statistical chart comparing values or analyzing trends.",
}


class VisragTrainSet(ImageRowExamples):
    """The examples of ``openbmb/VisRAG-Ret-Train-In-domain-data`` under ``root`` (see the module docstring).

    Args:
        root: the folder holding ``data/train.lance`` or the parquet files.

    Raises:
        DataError: a missing table or a bad row (naming file, row and field).
    """

    image_side = "positive"
    text_columns = ("query", "source")

    def render(self, row: dict) -> tuple[str | None, str]:
        source = row["source"]
        with blame("query"):
            if not normalize_whitespace(row["query"]):
                raise FieldError("the query is empty")
            check_plain_text(row["query"])
            query = normalize_whitespace(join_instruction(QUERY_INSTRUCTIONS.get(source, ""), row["query"], "none"))
        with blame("source"):
            instruction = POSITIVE_INSTRUCTIONS.get(source, "")
            rendered = token_first(
                f"{IMAGE_TOKEN} {instruction}" if instruction else IMAGE_TOKEN, IMAGE_TOKEN, LEGACY_IMAGE_TOKENS
            )
            page = strip_leading_placeholder(rendered, IMAGE_TOKEN)
        return page, query
