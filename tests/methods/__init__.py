"""Tests of albu_defects.methods (one module per method, plus the label model of issue 11)."""
