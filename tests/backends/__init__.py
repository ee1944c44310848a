import pytest

# The conformance mixin's asserts are rewritten like a test module's, so failures show the values.
pytest.register_assert_rewrite("backends.conformance")
