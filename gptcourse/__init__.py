"""gptcourse: the one package that the course's chapters, labs and solutions share.

Each module holds one concept of the course (see COURSE.md): ``data``, ``tokenizers``, ``ngram``,
``attention``, ``model``, ``train`` (the training loop), ``run`` (named training runs, their data
and the command line), ``generate``, ``plots``, ``widgets``, ``grading``, ``hardware`` (which
device and which run size a notebook uses, and GPU peak FLOP/s), and ``loops`` (the evaluation
mode and the optimiser step that every loop shares).

Conventions fixed here, where the references disagree (each one is tested):

* attention masks are boolean and **True means "may attend"**, as in
  ``torch.nn.functional.scaled_dot_product_attention``;
* the MLP uses GELU with the tanh approximation, as GPT-2 did (its TensorFlow code predates an
  exact erf GELU on TPUs); loading real GPT-2 weights therefore reproduces its logits;
* only 2-D weights (matmuls and embeddings) get weight decay; biases and LayerNorm gains do not;
* residual output projections are initialised with std 0.02 / sqrt(2 * n_layer) (GPT-2);
* the learning-rate warmup is linear from step 0.
"""

__version__ = "0.2.0"
