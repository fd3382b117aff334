"""Using a trained model: no Lightning is imported on the prediction path.

`checkpoint` (what a checkpoint holds: the record of net arguments, preprocessing and provenance, and the one reader),
`exported` (an exported folder's layout, record and its reader), `predictor` (Predictor: load a checkpoint or an
export, score texts as training preprocessed them, the options of predict/evaluate/serve), `predict` (the command:
input texts, output writers), `evaluate` (metrics on a labelled file or split, threshold choice), `metrics` (the
metric definitions training and evaluation share), `report` (plots), `hf` and `onnx` (the transformers and ONNX formats,
each writer with its reader), `export` (the command writing an export folder safely) and `serve` (the HTTP API and
its page). Training imports from here (the record, metrics, report); nothing here imports training.
"""
