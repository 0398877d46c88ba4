"""The live path's pure core: following a source of bars, scoring them as they arrive with the
decision that was evaluated, judging the predictions on realised labels, and alarms."""
