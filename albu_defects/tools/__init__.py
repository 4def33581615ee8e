"""User-facing tools: the command line (:mod:`.cli`), pipeline previews (:mod:`.preview`), the demo
picture (:mod:`.demo`) and the drawing helpers they share (:mod:`.visualize`)."""
