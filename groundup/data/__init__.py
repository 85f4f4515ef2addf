"""Data: tabular/image loading and preprocessing; text corpora, tokenizers and token shards."""

from groundup.data.builtin import BUILTIN_DATASETS, DatasetInfo, load_dataset
from groundup.data.corpus import BUILTIN_CORPORA, Corpus, iter_documents
from groundup.data.idx import load_idx, load_mnist
from groundup.data.preprocess import Imputer, Normalizer, check_arrays, split_indices
from groundup.data.shards import ShardIndex, TokenArray, load_shards, prepare_shards, token_dtype
from groundup.data.tabular import (
    CategoricalEncoder,
    CleaningReport,
    LabelEncoder,
    Table,
    clean_table,
    infer_task,
)
from groundup.data.tabular_pipeline import (
    Preprocessor,
    TabularData,
    TabularDataConfig,
    prepare_tabular,
)
from groundup.data.tabular_readers import load_table
from groundup.data.tokenizer_training import train_tokenizer
from groundup.data.tokenizers import Tokenizer
from groundup.data.windows import RandomWindows, SequentialWindows

__all__ = [
    "BUILTIN_CORPORA",
    "BUILTIN_DATASETS",
    "Corpus",
    "RandomWindows",
    "SequentialWindows",
    "ShardIndex",
    "TokenArray",
    "Tokenizer",
    "iter_documents",
    "load_shards",
    "prepare_shards",
    "token_dtype",
    "train_tokenizer",
    "CategoricalEncoder",
    "CleaningReport",
    "DatasetInfo",
    "Imputer",
    "LabelEncoder",
    "Normalizer",
    "Preprocessor",
    "Table",
    "TabularData",
    "TabularDataConfig",
    "check_arrays",
    "clean_table",
    "infer_task",
    "load_dataset",
    "load_idx",
    "load_mnist",
    "load_table",
    "prepare_tabular",
    "split_indices",
]
