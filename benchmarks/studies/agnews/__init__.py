"""The AGNews study: plan, runner, claims and their verdict rules, reports (agnews.md, kan_recipe.md)."""
