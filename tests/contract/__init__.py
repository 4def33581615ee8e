"""The contract suite: one parametrized suite over every transform albu_defects exports."""
