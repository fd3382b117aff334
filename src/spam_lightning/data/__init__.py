"""Texts to token ids: everything between a data file and a padded batch.

`tables` (the one reader of text files: strict UTF-8, delimiters, CSV/TSV tables, label spellings and class ids,
balancing and splitting), `preprocess` (GPT-2's tokenizer from its pinned ranks file, and the Preprocessing record
that training writes and prediction replays: encode, truncate, pad), `sms_spam` (the UCI SMS Spam Collection: download,
check, parse, balance, split as the book does), `samplers` (length-bucketed, resumable and DDP-sharded batches) and
`modules` (the LightningDataModules: SMS and your own CSV/TSV). Imports `model` only for the architecture's limits.
"""
