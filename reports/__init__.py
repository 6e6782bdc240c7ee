"""Reports: statistics, leaderboard, ablation tables, plots and the HTML page, rebuilt from result files only."""
